"""SAC and its critic ensemble: the policy's log-probability, the TD target, EDAC's term, learning."""

import io
import math
import warnings

import pytest
import torch
from tensordict import TensorDict

from planners import SAC, SACConfig
from planners import edac
from planners.edac import cosine_diversity, cosine_diversity_grad, critic_grads, gradient_diversity

O, A = 3, 2
LOW, HIGH = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 2.0])


def transitions(n: int, terminated: bool) -> TensorDict:
    flags = torch.full((n,), terminated)
    return TensorDict({
        "obs": torch.randn(n, O), "action": torch.rand(n, A) * (HIGH - LOW) + LOW, "reward": torch.randn(n),
        "next_obs": torch.randn(n, O), "terminated": flags, "truncated": torch.zeros(n, dtype=torch.bool),
    }, batch_size=[n])  # fmt: skip


def test_actor_log_prob_is_the_squashed_gaussians_density():
    agent = SAC(O, LOW, HIGH, SACConfig(hidden=16))
    obs = torch.randn(64, O)
    torch.manual_seed(1)
    action, log_prob = agent.actor(obs)
    mean, log_std = agent.actor.net(obs).chunk(2, dim=-1)
    base = torch.distributions.Normal(mean, log_std.clamp(-5, 2).exp())
    squash = [torch.distributions.TanhTransform(), torch.distributions.AffineTransform(agent.actor.center, agent.actor.half_range)]
    density = torch.distributions.TransformedDistribution(base, squash)
    expected = density.log_prob(action.clamp(LOW + 1e-6, HIGH - 1e-6)).sum(-1)
    assert ((action >= LOW) & (action <= HIGH)).all()
    torch.testing.assert_close(log_prob, expected, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("terminated", [False, True])
def test_td_target_bootstraps_only_from_non_terminal_steps(terminated):
    agent = SAC(O, LOW, HIGH, SACConfig(hidden=8, num_critics=3, discount=0.9, init_alpha=1e-9))
    with torch.no_grad():  # every critic (and target) outputs the constant c: Q = c everywhere
        for net in (agent.critics, agent.target_critics):
            for w in net.weights:
                w.zero_()
            for b in net.biases:
                b.zero_()
            net.biases[-1].fill_(2.0)
    batch = transitions(32, terminated)
    loss, q, _ = agent._critic_loss(batch)
    target = batch["reward"] + (0.0 if terminated else 0.9 * 2.0)
    assert torch.allclose(q, torch.full_like(q, 2.0))
    torch.testing.assert_close(loss, 3 * (2.0 - target).square().mean())


@pytest.mark.parametrize("subset, expected", [(None, -1.0), (2, -2.5)], ids=["sac_min", "redq_mean"])
def test_the_actor_reads_the_critics_min_or_with_a_critic_subset_redqs_mean(subset, expected):
    agent = SAC(O, LOW, HIGH, SACConfig(hidden=8, num_critics=4, critic_subset=subset, init_alpha=1e-9))
    with torch.no_grad():
        for w in agent.critics.weights:
            w.zero_()
        for b in agent.critics.biases:
            b.zero_()
        agent.critics.biases[-1].copy_(torch.tensor([[1.0], [2.0], [3.0], [4.0]]))
    actor_loss, _, _ = agent._actor_step(transitions(8, terminated=False)["obs"])
    assert actor_loss.item() == pytest.approx(expected, abs=1e-6)


def test_critic_subset_takes_the_min_over_that_many_random_critics():
    agent = SAC(O, LOW, HIGH, SACConfig(hidden=8, num_critics=4, critic_subset=2, discount=1.0, init_alpha=1e-9))
    with torch.no_grad():
        for w in agent.target_critics.weights:
            w.zero_()
        for b in agent.target_critics.biases:
            b.zero_()
        agent.target_critics.biases[-1].copy_(torch.tensor([[1.0], [2.0], [3.0], [4.0]]))
    batch = transitions(8, terminated=False)
    batch["reward"].zero_()
    seen = set()
    for _ in range(60):
        with torch.no_grad():
            q = agent.critics(batch["obs"], batch["action"])
            loss, _, _ = agent._critic_loss(batch)
        # loss = sum_i mean((q_i - t)^2) with one scalar target t: the min of 2 of {1, 2, 3, 4}
        candidates = {t: (q - t).square().mean(1).sum().item() for t in (1.0, 2.0, 3.0, 4.0)}
        seen.add(min(candidates, key=lambda t: abs(candidates[t] - loss.item())))
    assert seen == {1.0, 2.0, 3.0}  # 4 is never the smaller of two distinct critics; the mean would give 1.5, 2.5, ...


def test_gradient_diversity_of_known_action_gradients():
    action = torch.randn(3, 5, 2, requires_grad=True)
    same = torch.tensor([1.0, 2.0])
    q = (action * same).sum(-1)  # every critic has the same gradient
    assert gradient_diversity(q, action).item() == pytest.approx(3.0, abs=1e-5)  # N(N-1)/(N-1)
    pair = torch.randn(2, 5, 2, requires_grad=True)
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[:, None, :]
    assert gradient_diversity((pair * directions).sum(-1), pair).item() == pytest.approx(0.0, abs=1e-6)
    opposite = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])[:, None, :]
    assert gradient_diversity((pair * opposite).sum(-1), pair).item() == pytest.approx(-2.0, abs=1e-5)


@pytest.mark.parametrize("shape", [(2, 5, 3), (10, 64, 6)])
def test_cosine_diversity_gradient_in_closed_form(shape):
    """cosine_diversity_grad: the term and its gradient as autograd gives them (float64), a row whose
    action-gradient is exactly zero included."""
    torch.manual_seed(0)
    grad = torch.randn(*shape, dtype=torch.float64)
    grad[1, 2] = 0.0
    leaf = grad.clone().requires_grad_(True)
    want = cosine_diversity(leaf)
    (want_grad,) = torch.autograd.grad(want, leaf)
    got, got_grad = cosine_diversity_grad(grad)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("layers, eta, init", [(1, 2.0, "edac"), (3, 2.0, "edac"), (3, 2.0, "default"), (3, 0.0, "default")])
def test_edac_closed_form_gradients_match_autograds_double_backward(precision, layers, eta, init):
    """planners.edac.critic_grads against autograd through the loss's definition (_critic_loss):
    the same loss, Q, diversity and parameter gradients (bf16: up to its rounding). With eta 2 the
    diversity term is about 99% of the hidden weights' gradients, whatever the initialisation, so
    eta 0 is the case that checks the TD part of them (at bf16's tolerance too)."""
    torch.manual_seed(0)
    agent = SAC(O, LOW, HIGH, SACConfig(hidden=32, num_critics=4, critic_layers=layers, eta=eta, init=init,
                                        precision=precision))  # fmt: skip
    batch = transitions(64, terminated=False)
    torch.manual_seed(1)
    loss, q, diversity = agent._critic_loss(batch)
    loss.backward()
    expected = [p.grad.clone() for p in agent.critics.parameters()]
    agent.critics.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # (the same target: the actor samples next actions)
    got_loss, got_q, got_diversity = critic_grads(agent.critics, batch["obs"], batch["action"],
                                                  agent._td_target(batch), eta=eta)  # fmt: skip
    tolerance = 1e-5 if precision == "fp32" else 1e-2
    assert got_loss.item() == pytest.approx(loss.item(), rel=tolerance)
    if eta:
        assert got_diversity.item() == pytest.approx(diversity, rel=tolerance, abs=1e-6)
    torch.testing.assert_close(got_q, q, rtol=tolerance, atol=1e-6)
    for param, want in zip(agent.critics.parameters(), expected):
        assert param.grad.shape == want.shape
        assert (param.grad - want).norm() <= tolerance * want.norm()
    # a second call replaces the gradients (no accumulation, nothing stale left)
    for param in agent.critics.parameters():
        param.grad.fill_(float("nan"))
    torch.manual_seed(1)
    critic_grads(agent.critics, batch["obs"], batch["action"], agent._td_target(batch), eta=eta)
    assert all((p.grad - w).norm() <= tolerance * w.norm() for p, w in zip(agent.critics.parameters(), expected))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_edac_critic_step_matches_the_eager_one(precision, monkeypatch):
    """compile_critic_step: the same loss, Q and gradients through torch.compile (up to rounding)."""
    monkeypatch.setattr(edac, "_compiled", {})
    torch.manual_seed(0)
    agent = SAC(O, LOW, HIGH, SACConfig(hidden=32, num_critics=4, critic_layers=3, eta=2.0, init="edac",
                                        precision=precision))  # fmt: skip
    batch = transitions(64, terminated=False)
    target = agent._td_target(batch)
    loss, q, _ = critic_grads(agent.critics, batch["obs"], batch["action"], target, eta=2.0)
    eager = [p.grad.clone() for p in agent.critics.parameters()]
    got_loss, got_q, _ = critic_grads(agent.critics, batch["obs"], batch["action"], target, eta=2.0, compiled=True)
    assert "failed" not in edac._compiled, "torch.compile failed here"
    tolerance = 1e-5 if precision == "fp32" else 1e-2
    assert got_loss.item() == pytest.approx(loss.item(), rel=tolerance)
    torch.testing.assert_close(got_q, q, rtol=tolerance, atol=1e-5)
    for param, want in zip(agent.critics.parameters(), eager):
        assert (param.grad - want).norm() <= tolerance * want.norm()


def test_a_failed_compile_warns_once_and_the_step_runs_eagerly(monkeypatch):
    def no_compiler(*args):
        raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

    monkeypatch.setattr(edac, "_compiled", {"grads": no_compiler})
    torch.manual_seed(0)
    agent = SAC(O, LOW, HIGH, SACConfig(hidden=16, num_critics=3, eta=1.0))
    batch = transitions(32, terminated=False)
    target = agent._td_target(batch)
    critic_grads(agent.critics, batch["obs"], batch["action"], target, eta=1.0)
    eager = [p.grad.clone() for p in agent.critics.parameters()]
    with pytest.warns(UserWarning, match="runs eagerly"):
        critic_grads(agent.critics, batch["obs"], batch["action"], target, eta=1.0, compiled=True)
    assert all(torch.equal(p.grad, want) for p, want in zip(agent.critics.parameters(), eager))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: later steps go eagerly without trying again
        critic_grads(agent.critics, batch["obs"], batch["action"], target, eta=1.0, compiled=True)


def test_edac_term_makes_critic_gradients_diverse():
    torch.manual_seed(0)
    agent = SAC(O, LOW, HIGH, SACConfig(hidden=32, num_critics=4, eta=5.0))
    batch = transitions(256, terminated=True)
    first = agent.update(batch)["diversity"]
    for _ in range(150):
        last = agent.update(batch)["diversity"]
    assert last < first - 0.5


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sac_solves_a_one_step_bandit(precision):
    """reward = -(a - a*)^2 with every step terminal: Q must learn the reward, the policy its peak
    (also with the hidden layers on bf16 operands)."""
    torch.manual_seed(0)
    best = torch.tensor([0.5, 1.5])
    agent = SAC(O, LOW, HIGH, SACConfig(hidden=64, actor_lr=3e-3, critic_lr=3e-3, alpha_lr=3e-3, init_alpha=0.1,
                                        precision=precision))
    for _ in range(600):
        batch = transitions(256, terminated=True)
        batch["reward"] = -(batch["action"] - best).square().sum(-1)
        agent.update(batch)
    obs = torch.randn(100, O)
    chosen = agent.act(obs, deterministic=True)
    assert (chosen - best).abs().mean() < 0.08
    q = agent.critics(obs, chosen).mean(0)
    assert q.abs().mean() < 0.1  # the peak's reward is 0


def bandit(agent: SAC, best: torch.Tensor, updates: int) -> torch.Tensor:
    """Train on reward = 1 - (a - best)^2, every step terminal; the deterministic actions [100, A] after."""
    for _ in range(updates):
        batch = transitions(256, terminated=True)
        batch["reward"] = 1 - (batch["action"] - best).square().sum(-1)
        agent.update(batch)
    return agent.act(torch.randn(100, O), deterministic=True)


def test_the_actor_anchor_keeps_a_fine_tuned_actor_near_the_one_it_was_loaded_with():
    """Pretrained on one bandit, fine-tuned on another: without actor_anchor the actor moves to the
    new peak; with it, load_pretrained_agent anchors it where it was loaded and it stays near."""
    from planners import load_pretrained_agent
    from planners.base import Planner

    class ValueHolder(Planner):  # a planner that is its learned value alone
        LEARNED = "value_agent"

        def __init__(self, agent: SAC):
            self.value_agent = agent

        def reset(self) -> None:
            pass

        def act(self, obs, deterministic=False):
            return self.value_agent.act(obs, deterministic)

    torch.manual_seed(0)
    first, best = torch.tensor([-0.5, 0.5]), torch.tensor([0.5, 1.5])
    fast = dict(hidden=64, actor_lr=3e-3, critic_lr=3e-3, alpha_lr=3e-3, init_alpha=0.1)
    pretrained = SAC(O, LOW, HIGH, SACConfig(**fast))
    assert (bandit(pretrained, first, 600) - first).abs().mean() < 0.1
    moved = {}
    # (anchor 8: the loss is about |a - best|^2 + 4 |a - first|^2, least a fifth of the way if Q were exact)
    for anchor in (0.0, 8.0):
        planner = ValueHolder(SAC(O, LOW, HIGH, SACConfig(**fast, actor_anchor=anchor)))
        load_pretrained_agent(planner, {"value_agent": pretrained.training_state()})
        assert (planner.value_agent.anchor is None) == (anchor == 0)
        moved[anchor] = (bandit(planner.value_agent, best, 600) - first).abs().mean().item()
    assert moved[0.0] > 0.8 and moved[8.0] < 0.55, moved  # (the peaks are 1 apart in each action)
    assert "anchor_gap" in planner.value_agent.update(transitions(32, terminated=True))


def test_the_anchor_term_is_td3_bc_scaled_and_reported():
    """actor_anchor x mean|Q| x the mean square gap of the deterministic actions in half-ranges is
    added to SAC's actor loss; an unanchored agent warns that the setting does nothing."""
    agent = SAC(O, LOW, HIGH, SACConfig(hidden=16, actor_anchor=0.4))
    agent.set_anchor()
    with torch.no_grad():
        agent.actor.net[-1].bias.add_(0.3)  # the actor moved off its anchor
    obs = torch.randn(64, O)
    torch.manual_seed(7)
    mean, log_std = agent.actor.gaussian(obs)
    action, log_prob = agent.actor.sample(mean, log_std)
    q = agent.critics(obs, action).amin(0)
    gap = ((agent.actor.squash(mean) - agent.anchor(obs, True)[0]) / (HIGH - LOW) * 2).square().mean()
    expected = (agent.alpha * log_prob - q).mean() + 0.4 * q.abs().mean() * gap
    torch.manual_seed(7)
    loss, _, reported = agent._actor_step(obs)
    torch.testing.assert_close(loss, expected.detach())
    torch.testing.assert_close(reported, gap.detach())
    assert gap > 1e-3
    with pytest.warns(UserWarning, match="actor_anchor=0.4 but this agent has no anchor"):
        SAC(O, LOW, HIGH, SACConfig(hidden=16, actor_anchor=0.4)).update(transitions(8, terminated=False))


def test_training_state_round_trip_continues_identically():
    config = SACConfig(hidden=16, num_critics=3, eta=1.0, actor_anchor=0.4)
    agent, copy = SAC(O, LOW, HIGH, config), SAC(O, LOW, HIGH, config)
    agent.set_anchor()  # (the trust region's centre travels with the training state)
    batches = [transitions(32, terminated=False) for _ in range(3)]
    agent.update(batches[0])
    saved = io.BytesIO()
    torch.save(agent.training_state(), saved)  # as a checkpoint holds it
    saved.seek(0)
    copy.load_training_state(torch.load(saved))
    torch.manual_seed(5)
    expected = [agent.update(b) for b in batches[1:]]
    torch.manual_seed(5)
    assert [copy.update(b) for b in batches[1:]] == expected
    assert copy.updates == agent.updates == 3
    assert torch.equal(copy.anchor.net[0].weight, agent.anchor.net[0].weight)


def test_the_default_target_entropy_is_minus_a_in_the_unit_box_whatever_the_tasks_box():
    """log_prob is the density in the task's units; SAC's -A target is in [-1, 1]: a box of
    half-range 2 (pusher's) moves the target by log 2 a dimension, a unit box leaves it at -A."""
    ones = torch.ones(3)
    assert SAC(O, -ones, ones).target_entropy == pytest.approx(-3.0)
    assert SAC(O, -2 * ones, 2 * ones).target_entropy == pytest.approx(-3.0 + 3 * math.log(2.0))
    assert SAC(O, -2 * ones, 2 * ones, SACConfig(target_entropy=-1.5)).target_entropy == -1.5


def test_a_loaded_training_state_is_the_loaders_own_not_shared_with_the_saver():
    """Loading another agent's state (a background learner's swap) copies its optimiser moments: the
    saver's later updates do not move the loader's, so a snapshot's moments match its weights."""
    config = SACConfig(hidden=16)
    saver, loader = SAC(O, LOW, HIGH, config), SAC(O, LOW, HIGH, config)
    saver.update(transitions(32, terminated=False))
    loader.load_training_state(saver.training_state())
    optimisers = ("critic_optim", "actor_optim", "alpha_optim")
    loaded = {name: [{k: s[k].clone() for k in ("exp_avg", "exp_avg_sq")} for s in getattr(loader, name).state.values()]
              for name in optimisers}  # fmt: skip
    assert all(len(loaded[name]) == len(getattr(saver, name).state) > 0 for name in optimisers)  # (moments were loaded)
    saver.update(transitions(32, terminated=False))
    for name in optimisers:
        for before, now in zip(loaded[name], getattr(loader, name).state.values(), strict=True):
            assert all(torch.equal(before[k], now[k]) for k in before), name


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(num_critics=0), r"num_critics, hidden and the layer counts must be >= 1, got num_critics=0, hidden=256"),
        (dict(hidden=0), r"must be >= 1, got num_critics=2, hidden=0,"),
        (dict(critic_layers=0), r"must be >= 1, got .* actor_layers=2, critic_layers=0"),
        (dict(critic_subset=3), r"critic_subset must be in \[1, num_critics=2\], got 3"),
        (dict(critic_subset=0), r"critic_subset must be in \[1, num_critics=2\], got 0"),
        (dict(num_critics=1, eta=1.0), r"gradient-diversity term \(eta=1.0 > 0\) needs num_critics >= 2, got 1"),
        (dict(init="xavier"), r"init must be one of \('default', 'edac'\), .* got init='xavier'"),
        (dict(precision="fp16"), r"precision one of \('fp32', 'bf16'\), .* precision='fp16'"),
        (dict(update_order="alpha_first"), r"update_order one of .* update_order='alpha_first'"),
        (dict(alpha_max=0.0), r"alpha_max must be > 0 or None, got 0.0"),
        (dict(actor_anchor=-1.0), r"actor_anchor must be >= 0 \(0: no trust region\), got -1.0"),
        (dict(critic_lr=-3e-4), r"learning rates must be >= 0 \(0: frozen\) .* critic_lr=-0.0003"),
        (dict(tau=1.5), r"tau in \[0, 1\], got .* tau=1.5"),
        (dict(init_alpha=0.0), r"init_alpha must be > 0 \(for a fixed temperature set alpha_lr=0\) .* init_alpha=0.0"),
        (dict(discount=1.5), r"discount in \[0, 1\], got .* discount=1.5"),
    ],
    ids=["num_critics=0", "hidden=0", "critic_layers=0", "critic_subset=3", "critic_subset=0", "eta_one_critic",
         "init", "precision", "update_order", "alpha_max", "actor_anchor", "negative_lr", "tau", "init_alpha",
         "discount"],
)
def test_bad_settings_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        SACConfig(**bad)


def test_value_is_the_min_critic_minus_the_entropy_cost():
    agent = SAC(O, LOW, HIGH, SACConfig(hidden=8, num_critics=2, init_alpha=math.e))
    obs = torch.randn(16, O)
    torch.manual_seed(3)
    value = agent.value(obs)
    torch.manual_seed(3)
    action, log_prob = agent.actor(obs)
    torch.testing.assert_close(value, agent.critics(obs, action).amin(0).detach() - math.e * log_prob.detach())


def test_alpha_max_caps_the_temperature_the_losses_use():
    agent = SAC(O, LOW, HIGH, SACConfig(hidden=8, init_alpha=5.0, alpha_max=1.0))
    assert agent.log_alpha.exp().item() == pytest.approx(5.0) and agent.alpha.item() == 1.0
    assert agent.update(transitions(16, terminated=False))["alpha"] == 1.0
    assert SAC(O, LOW, HIGH, SACConfig(hidden=8, init_alpha=5.0)).alpha.item() == pytest.approx(5.0)


def test_edac_initialisation():
    agent = SAC(O, LOW, HIGH, SACConfig(hidden=16, actor_layers=3, critic_layers=3, num_critics=4, init="edac"))
    hidden_actor = list(agent.actor.net)[:-1:2]
    assert len(hidden_actor) == 3 and all((layer.bias == 0.1).all() for layer in hidden_actor)
    assert agent.actor.net[-1].weight.abs().max() <= 1e-3 and agent.actor.net[-1].bias.abs().max() <= 1e-3
    assert all((b == 0.1).all() for b in list(agent.critics.biases)[:-1])
    assert agent.critics.weights[-1].abs().max() <= 3e-3 and agent.critics.weights[-1].abs().max() > 0
    assert agent.target_critics.weights[-1].equal(agent.critics.weights[-1])  # the targets start equal


@pytest.mark.parametrize("order", ["actor_first", "critic_first"])
def test_update_order_decides_which_critics_the_actor_step_reads(order):
    """actor_first (EDAC): the actor steps against the critics as they were before this update, so
    freezing the critics (critic_lr=0) leaves its step unchanged; critic_first: it reads updated ones."""
    batch = transitions(64, terminated=False)
    actors = []
    for critic_lr in (3e-1, 0.0):
        torch.manual_seed(0)
        agent = SAC(O, LOW, HIGH, SACConfig(hidden=16, update_order=order, critic_lr=critic_lr))
        agent.update(batch)
        actors.append(torch.cat([p.flatten() for p in agent.actor.parameters()]))
    assert actors[0].equal(actors[1]) == (order == "actor_first")


def test_cosine_actor_lr_anneals_over_the_horizon_and_survives_a_checkpoint():
    agent = SAC(O, LOW, HIGH, SACConfig(hidden=8, actor_lr=1e-3))
    agent.anneal_actor_lr(4)
    lrs = [agent.update(transitions(8, terminated=False))["actor_lr"] for _ in range(6)]
    assert lrs == pytest.approx([1e-3, 0.5e-3 * (1 + math.cos(math.pi / 4)), 0.5e-3, 0.5e-3 * (1 - math.cos(math.pi / 4)),
                                 0.0, 0.0])  # fmt: skip
    copy = SAC(O, LOW, HIGH, SACConfig(hidden=8, actor_lr=1e-3))
    copy.load_training_state(agent.training_state())
    assert copy.actor_lr_horizon == 4 and copy.actor_optim.param_groups[0]["lr"] == 0.0
    copy.anneal_actor_lr(None)  # constant again (online)
    assert copy.update(transitions(8, terminated=False))["actor_lr"] == 1e-3
    # a pretrained agent (7 updates so far) annealed over 4 more starts at actor_lr, and a checkpoint keeps the start
    copy.anneal_actor_lr(copy.updates + 4)
    later = [copy.update(transitions(8, terminated=False))["actor_lr"] for _ in range(2)]
    assert later == pytest.approx(lrs[:2])
    again = SAC(O, LOW, HIGH, SACConfig(hidden=8, actor_lr=1e-3))
    again.load_training_state(copy.training_state())
    assert again.update(transitions(8, terminated=False))["actor_lr"] == pytest.approx(lrs[2])


def test_a_loaded_training_state_keeps_the_receiving_agents_learning_rates():
    """A pretrained agent (MOPO's: actor 1e-4, critics 3e-4) loaded as a planner's learned value
    trains at the planner's own settings, not at the rates its optimisers were saved with."""
    pretrained = SAC(O, LOW, HIGH, SACConfig(hidden=8, actor_lr=1e-4, critic_lr=3e-4, alpha_lr=3e-4))
    pretrained.update(transitions(8, terminated=False))
    value = SAC(O, LOW, HIGH, SACConfig(hidden=8, actor_lr=2e-5, critic_lr=5e-5, alpha_lr=1e-5))
    value.load_training_state(pretrained.training_state())
    lrs = [o.param_groups[0]["lr"] for o in (value.actor_optim, value.critic_optim, value.alpha_optim)]
    assert lrs == [2e-5, 5e-5, 1e-5]
    assert value.critic_optim.state_dict()["state"]  # (the moments did come along)


def test_the_disagreement_penalty_takes_mean_minus_lambda_std_of_the_critics():
    agent = SAC(O, LOW, HIGH, SACConfig(hidden=8, num_critics=5))
    obs = torch.randn(16, O)
    q = agent.critics(obs, agent.act(obs, deterministic=True))
    torch.testing.assert_close(agent.value(obs, True, 2.0), q.mean(0) - 2.0 * q.std(0))
    torch.testing.assert_close(agent.value(obs, True), q.amin(0))


def test_bf16_agent_keeps_fp32_parameters_and_matches_fp32_values():
    config = SACConfig(hidden=64, num_critics=3, critic_layers=3, eta=1.0, precision="bf16")
    agent, exact = SAC(O, LOW, HIGH, config), SAC(O, LOW, HIGH, SACConfig(hidden=64, num_critics=3, critic_layers=3))
    for _ in range(3):
        losses = agent.update(transitions(64, terminated=False))  # EDAC's double backward too
    assert all(math.isfinite(v) for v in losses.values())
    assert all(p.dtype == torch.float32 for p in agent.parameters())
    exact.load_state_dict(agent.state_dict())
    obs, action = torch.randn(200, O), torch.rand(200, A) * (HIGH - LOW) + LOW
    with torch.no_grad():
        low, high = agent.critics(obs, action), exact.critics(obs, action)
    assert low.dtype == torch.float32 and 0 < (low - high).abs().max() < 0.05 * high.abs().max() + 0.01
    low, high = agent.act(obs, deterministic=True), exact.act(obs, deterministic=True)
    assert low.dtype == torch.float32 and 0 < (low - high).abs().max() < 0.05


def test_an_update_whose_losses_are_not_finite_is_an_error_not_a_silent_divergence():
    """A huge reward (an exploding critic) makes the losses inf or NaN, and Adam writes them into the
    weights: the update says the agent diverged and what to do, rather than training on NaN."""
    torch.manual_seed(0)
    agent = SAC(O, LOW, HIGH, SACConfig(hidden=16))
    batch = transitions(64, terminated=True)
    agent.update(batch)  # (a finite one goes through)
    batch["reward"] = torch.full_like(batch["reward"], 1e30)
    with pytest.raises(FloatingPointError, match=r"SAC update 2: critic loss inf.*the agent diverged. Lower the learning"):
        agent.update(batch)
