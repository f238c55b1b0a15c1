"""Dyna planners (MBPO, MOPO, RAVL) and behaviour cloning on hand-made ensembles whose predictions are known."""

import math
import warnings

import pytest
import torch
from tensordict import TensorDict

import planners.imagination
from planners import MBPO, MOPO, RAVL, BehaviourCloning, DynaConfig, MOPOConfig, make_planner
from worldmodel import EnsembleDynamics, TaskSpec

O, A = 2, 1
SPEC = TaskSpec("hand-made", O, A, torch.full((A,), -1.0), torch.full((A,), 1.0), 100, None)


def constant_ensemble(delta, reward, std, termination_fn=None, num_elites=None) -> EnsembleDynamics:
    """Each member predicts a fixed Gaussian whatever the input: mean (delta[i], reward[i]),
    standard deviation std[i] (per output), so every prediction is known in closed form."""
    delta, reward, std = torch.as_tensor(delta).float(), torch.as_tensor(reward).float(), torch.as_tensor(std).float()
    members = delta.shape[0]
    model = EnsembleDynamics(O, A, ensemble_size=members, num_elites=num_elites or members, hidden=4, layers=1,
                             termination_fn=termination_fn)  # fmt: skip
    with torch.no_grad():
        for w in model.weights:
            w.zero_()
        model.max_logvar.fill_(10.0)
        model.min_logvar.fill_(-30.0)
        # invert the soft clamp lv = max - softplus(max - raw) (the lower bound is inactive here)
        lv = (2 * std.log()).clamp_min(-25.0)
        raw = model.max_logvar - torch.log(torch.expm1(model.max_logvar - lv))
        model.biases[-1].copy_(torch.cat([delta, reward[:, None], raw], dim=-1))
    return model


def real_data(n: int, reward: float = 1000.0) -> TensorDict:
    flags = torch.zeros(n, dtype=torch.bool)
    return TensorDict({"obs": torch.randn(n, O), "action": torch.rand(n, A) * 2 - 1, "reward": torch.full((n,), reward),
                       "next_obs": torch.randn(n, O), "terminated": flags, "truncated": flags.clone()}, [n])  # fmt: skip


def test_constant_ensemble_predicts_what_it_was_built_with():
    model = constant_ensemble([[1.0, 0.0], [0.0, 2.0]], [0.5, -0.5], [[0.1, 0.2, 0.01], [0.3, 0.4, 0.01]])
    mean, var = model.predict(torch.randn(5, O), torch.randn(5, A))
    torch.testing.assert_close(mean[1, 0], torch.tensor([0.0, 2.0, -0.5]))
    torch.testing.assert_close(var[0, 0].sqrt(), torch.tensor([0.1, 0.2, 0.01]), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("penalty", [0.0, 0.5, 2.0])
def test_mopo_subtracts_lambda_times_the_max_aleatoric_norm(penalty):
    std = torch.tensor([[0.3, 0.4, 1e-3], [0.6, 0.8, 1e-3], [0.0, 0.5, 1e-3]])  # obs-std norms 0.5, 1.0, 0.5
    model = constant_ensemble(torch.zeros(3, O), [1.0, 1.0, 1.0], std)
    planner = MOPO(model, SPEC, MOPOConfig(penalty=penalty, rollout_length=1, rollout_batch_size=200, seed=0,
                                           uncertainty_elites_only=True, uncertainty_include_reward=False))
    planner.observe(real_data(200))
    stats = planner.rollout()
    imagined = planner.model_buffer.data()
    expected = 1.0 - penalty * 1.0  # max over members of ||sigma_obs||
    assert torch.allclose(imagined["reward"], torch.full_like(imagined["reward"], expected), atol=0.02)
    assert stats["penalty_mean"] == pytest.approx(1.0 if penalty else 0.0, abs=1e-3)


def test_mopo_default_penalty_is_its_codes_max_over_every_member_with_the_reward():
    """Member 2 is not an elite but has the widest spread, and its reward std dominates: MOPO's code
    (max over all members of the std norm over all outputs) must see it; elites-only would not."""
    std = torch.tensor([[0.3, 0.4, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 3.0]])
    model = constant_ensemble(torch.zeros(3, O), [1.0, 1.0, 1.0], std.clamp_min(1e-4), num_elites=2)
    model.elites.copy_(torch.tensor([0, 1]))
    planner = MOPO(model, SPEC, MOPOConfig(rollout_length=1, rollout_batch_size=100, seed=0))
    planner.observe(real_data(100))
    assert planner.rollout()["penalty_mean"] == pytest.approx(3.0, rel=1e-3)
    elites_obs_only = MOPO(model, SPEC, MOPOConfig(rollout_length=1, rollout_batch_size=100, seed=0,
                                                   uncertainty_elites_only=True, uncertainty_include_reward=False))
    elites_obs_only.observe(real_data(100))
    assert elites_obs_only.rollout()["penalty_mean"] == pytest.approx(1.0, rel=1e-3)


def test_rollout_statistics_show_what_the_penalty_takes_from_the_raw_reward():
    std = torch.tensor([[0.3, 0.4, 1e-3], [0.6, 0.8, 1e-3]])  # obs-std norms 0.5 and 1.0: the max is 1.0
    model = constant_ensemble(torch.zeros(2, O), [0.5, 0.5], std)
    planner = MOPO(model, SPEC, MOPOConfig(penalty=2.0, rollout_length=1, rollout_batch_size=300, seed=0,
                                           uncertainty_elites_only=True, uncertainty_include_reward=False))
    planner.observe(real_data(300))
    stats = planner.rollout()
    assert stats["raw_reward"] == pytest.approx(0.5, abs=0.02)  # before the penalty
    assert stats["imagined_reward"] == pytest.approx(0.5 - 2.0, abs=0.02)  # what the agent learns from
    assert stats["penalty_share"] == pytest.approx(2.0 * 1.0 / 0.5, rel=0.05)  # the penalty is 4x the reward


@pytest.mark.parametrize("penalty, warns", [(2.0, True), (0.4, False)])
def test_a_penalty_that_turns_the_reward_negative_is_warned_about_once(penalty, warns):
    std = torch.tensor([[0.6, 0.8, 1e-3]])  # the penalty is penalty x 1.0 against a raw reward of 0.5
    model = constant_ensemble(torch.zeros(1, O), [0.5], std)
    planner = MOPO(model, SPEC, MOPOConfig(penalty=penalty, rollout_length=1, rollout_batch_size=100, seed=0,
                                           uncertainty_elites_only=True, uncertainty_include_reward=False))
    planner.observe(real_data(100))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        planner.rollout()
        planner.rollout()
    swamped = [w for w in caught if "every imagined step is a loss" in str(w.message)]
    assert len(swamped) == (1 if warns else 0)
    if warns:
        assert "4.0x the raw imagined reward" in str(swamped[0].message) and "offline.fit_epochs=null" in str(swamped[0].message)


@pytest.mark.parametrize("limit, steps", [(100.0, 2), (None, 5)])
def test_a_state_beyond_obs_limit_ends_its_rollout(limit, steps):
    model = constant_ensemble([[60.0, 0.0]], [0.0], [[1e-3, 1e-3, 1e-3]])  # x grows by 60 a step: 60, 120, ...
    planner = MBPO(model, SPEC, DynaConfig(rollout_length=5, rollout_batch_size=100, obs_limit=limit, seed=0))
    planner.observe(real_data(100))
    stats = planner.rollout()
    assert stats["mean_steps_per_start"] == steps
    assert stats["out_of_range_rows"] == (100 if limit else 0)
    assert int(planner.model_buffer.data()["terminated"].sum()) == (100 if limit else 0)  # kept, as terminal steps


@pytest.mark.parametrize("chunk", [4096, 7])
def test_rollouts_stop_at_terminal_steps(chunk, monkeypatch):
    """obs[0] grows by 1 per step and the task ends once it passes 2.5: every rollout is 3 steps
    (also with the starts imagined in chunks of 7: every start once, each rollout whole)."""
    monkeypatch.setattr(planners.imagination, "ROLLOUT_CHUNK", chunk)
    model = constant_ensemble([[1.0, 0.0]], [0.0], [[1e-4, 1e-4, 1e-4]], termination_fn=lambda o, a, n: n[:, 0] > 2.5)
    planner = MBPO(model, SPEC, DynaConfig(rollout_length=5, rollout_batch_size=50, seed=0))
    data = real_data(50)
    data["obs"][:, 0] = 0.0
    planner.observe(data)
    stats = planner.rollout()
    imagined = planner.model_buffer.data()
    assert len(imagined) == 150 and stats["mean_steps_per_start"] == pytest.approx(3.0)
    assert imagined["terminated"].sum() == 50 and (imagined["obs"][:, 0] == 0).sum() == 50
    assert (imagined["next_obs"][imagined["terminated"], 0] > 2.5).all()
    assert (imagined["next_obs"][~imagined["terminated"], 0] < 2.5).all()


def test_rollout_drops_rows_that_become_non_finite():
    model = constant_ensemble([[1.0, 0.0]], [0.0], [[1e-4, 1e-4, 1e-4]])
    planner = MBPO(model, SPEC, DynaConfig(rollout_length=2, rollout_batch_size=10, seed=0))
    start = torch.zeros(10, O)
    start[:3, 1] = float("nan")
    planner.observe(real_data(10))
    stats = planner.rollout(start)
    assert stats["nonfinite_rows"] == 3 and len(planner.model_buffer) == 14
    assert torch.isfinite(planner.model_buffer.data()["next_obs"]).all()


@pytest.mark.parametrize("ratio", [0.0, 0.25, 1.0])
def test_agent_batches_mix_real_and_imagined_data_by_real_ratio(ratio):
    model = constant_ensemble([[0.0, 0.0]], [0.0], [[1e-3, 1e-3, 1e-3]])
    planner = MBPO(model, SPEC, DynaConfig(rollout_length=1, rollout_batch_size=100, real_ratio=ratio, seed=0))
    planner.observe(real_data(100, reward=1000.0))  # imagined rewards are ~0
    planner.rollout()
    batch = planner._batch()
    assert len(batch) == planner.agent.config.batch_size
    assert (batch["reward"] > 500).float().mean().item() == pytest.approx(ratio, abs=1 / 256)


def test_symmetric_sampling_splits_the_real_part_between_prior_and_new_data():
    model = constant_ensemble([[0.0, 0.0]], [0.0], [[1e-3, 1e-3, 1e-3]])
    config = DynaConfig(rollout_length=1, rollout_batch_size=100, real_ratio=0.5, symmetric_sampling=True, seed=0)
    planner = MBPO(model, SPEC, config)
    planner.observe(real_data(100, reward=1000.0))  # the offline dataset
    planner.observe(real_data(5, reward=2000.0))  # new real steps
    planner.prior_rows = 100
    planner.rollout()
    batch = planner._batch()  # 128 real rows: 64 offline, 64 new; 128 imagined
    assert ((batch["reward"] > 500) & (batch["reward"] < 1500)).sum() == 64 and (batch["reward"] > 1500).sum() == 64


def test_learn_rolls_out_every_rollout_every_updates():
    model = constant_ensemble([[0.0, 0.0]], [0.0], [[1e-3, 1e-3, 1e-3]])
    config = DynaConfig(rollout_length=1, rollout_batch_size=20, rollout_every=3, retain_rounds=10,
                        agent={"hidden": 16, "batch_size": 8}, seed=0)  # fmt: skip
    planner = MBPO(model, SPEC, config)
    planner.observe(real_data(20))
    planner.learn(7)  # a round before updates 1, 4 and 7
    assert len(planner.model_buffer) == 60 and planner.agent.updates == 7


def test_mbpo_rollout_length_schedule_grows_with_real_data():
    model = constant_ensemble([[0.0, 0.0]], [0.0], [[1e-3, 1e-3, 1e-3]])
    planner = MBPO(model, SPEC, DynaConfig(rollout_schedule=[10, 30, 1, 5], rollout_batch_size=4))
    lengths = []
    for _ in range(4):
        planner.observe(real_data(10))
        lengths.append(planner.rollout_length)
    assert lengths == [1, 3, 5, 5]


def test_the_model_buffer_keeps_retain_rounds_rounds_of_the_rollout_length_now():
    """Under a schedule the buffer holds retain_rounds rounds of today's k (MBPO's reallocation), not
    of the longest k: 2 rounds of k=1 while k is 1, then the newest rows carried into k=5's buffer."""
    model = constant_ensemble([[0.0, 0.0]], [0.0], [[1e-3, 1e-3, 1e-3]])
    planner = MBPO(model, SPEC, DynaConfig(rollout_schedule=[10, 30, 1, 5], rollout_batch_size=4, retain_rounds=2))
    planner.observe(real_data(10))
    for _ in range(4):
        planner.rollout()
    assert planner.model_buffer.capacity == 8 and len(planner.model_buffer) == 8
    planner.observe(real_data(20))
    planner.rollout()  # k = 5: 20 rows more
    assert planner.model_buffer.capacity == 40 and len(planner.model_buffer) == 28


def test_a_rollout_round_that_keeps_nothing_warns_and_waits_for_the_next_round():
    model = constant_ensemble([[1.0, 0.0]], [0.0], [[1e-4, 1e-4, 1e-4]])
    config = DynaConfig(rollout_length=1, rollout_batch_size=4, rollout_every=5, agent={"hidden": 16, "batch_size": 8})
    planner = MBPO(model, SPEC, config)
    data = real_data(4)
    data["obs"][:, 1] = float("nan")  # every imagined row is non-finite
    planner.buffer.extend(real_data(8))
    with pytest.warns(UserWarning, match="kept no imagined transition"):
        planner.rollout(data["obs"])
    rounds = []
    planner.rollout = lambda: rounds.append(1)  # (counts the rounds learn() starts)
    planner.learn(4)
    assert rounds == [] and planner.agent.updates == 4  # real data only, no round per update


def test_the_cosine_actor_lr_starts_at_actor_lr_after_a_pretrained_agents_updates():
    """schedule(N) anneals over the next N updates, from the agent's count now (a pretrained agent's
    100), and a budget extended later keeps that start (a resumed run given more updates)."""
    model = constant_ensemble([[0.0, 0.0]], [0.0], [[1e-3, 1e-3, 1e-3]])
    planner = MOPO(model, SPEC, MOPOConfig(actor_lr_cosine=True))
    agent, lr = planner.agent, planner.agent.config.actor_lr
    agent.updates = 100
    planner.schedule(50)
    assert agent.actor_lr_start == 100 and agent.actor_optim.param_groups[0]["lr"] == pytest.approx(lr)
    agent.updates = 125
    planner.schedule(75)  # (now 200 in all)
    assert agent.actor_lr_start == 100 and agent.actor_optim.param_groups[0]["lr"] == pytest.approx(lr * 0.5 * (1 + 0.5**0.5))


def test_partial_agent_settings_keep_the_planners_other_defaults():
    model = constant_ensemble([[0.0, 0.0]], [0.0], [[1e-3, 1e-3, 1e-3]])
    ravl = make_planner("ravl", model, SPEC, agent={"num_critics": 5})
    assert ravl.agent.config.num_critics == 5 and ravl.agent.config.eta == 1.0 and ravl.agent.config.critic_layers == 3
    with pytest.raises(ValueError, match="lengths >= 1"):
        make_planner("mbpo", model, SPEC, rollout_schedule=[0, 10, 0, 5])


def test_ravl_defaults_are_edac_critics_without_a_penalty():
    model = constant_ensemble([[0.0, 0.0]], [0.0], [[1e-3, 1e-3, 1e-3]])
    ravl, mopo = RAVL(model, SPEC), MOPO(model, SPEC)
    assert ravl.config.penalty == 0 and ravl.agent.config.num_critics == 10 and ravl.agent.config.eta > 0
    assert mopo.config.penalty > 0 and mopo.agent.config.num_critics == 2 and mopo.agent.config.eta == 0


def test_planner_registry_builds_dyna_planners_and_refuses_bad_settings():
    model = constant_ensemble([[0.0, 0.0]], [0.0], [[1e-3, 1e-3, 1e-3]])
    planner = make_planner("mopo", model, SPEC, penalty=0.3, agent={"num_critics": 4})
    assert isinstance(planner, MOPO) and planner.config.penalty == 0.3 and planner.agent.config.num_critics == 4
    with pytest.raises(ValueError, match=r"unknown setting planner.agent.critics; valid: .*num_critics"):
        make_planner("ravl", model, SPEC, agent={"critics": 4})
    with pytest.raises(ValueError, match=r"planner.rollout_length must be an int, got 'five'"):
        make_planner("mopo", model, SPEC, rollout_length="five")
    with pytest.raises(ValueError, match="uncertainty"):
        make_planner("mopo", model, SPEC, uncertainty="nonsense")
    with pytest.raises(ValueError, match="terminal value"):
        make_planner("mbpo", model, SPEC, terminal_value=lambda s: s[:, 0])


def test_behaviour_cloning_recovers_a_linear_behaviour_policy():
    torch.manual_seed(0)
    data = real_data(2000)
    data["action"] = (0.5 * data["obs"][:, :1] - 0.2 * data["obs"][:, 1:]).clamp(-1, 1)
    bc = BehaviourCloning(None, SPEC)
    bc.observe(data)
    bc.learn(800)
    obs = torch.randn(200, O)
    expected = (0.5 * obs[:, :1] - 0.2 * obs[:, 1:]).clamp(-1, 1)
    assert (bc.act(obs) - expected).abs().mean() < 0.05


def test_dyna_checkpoint_state_round_trip():
    model = constant_ensemble([[0.0, 0.0]], [0.0], [[1e-3, 1e-3, 1e-3]])
    config = DynaConfig(rollout_length=1, rollout_batch_size=20, agent={"hidden": 16, "batch_size": 8}, seed=0)
    planner, other = MBPO(model, SPEC, config), MBPO(model, SPEC, DynaConfig(**{**config.__dict__, "seed": 1}))
    planner.observe(real_data(20))
    planner.learn(3)
    other.load_state_dict(planner.state_dict())
    obs = torch.randn(4, O)
    torch.testing.assert_close(other.act(obs, deterministic=True), planner.act(obs, deterministic=True))
    assert other.agent.updates == 3 and other.imagination.updates_since_rollout == planner.imagination.updates_since_rollout == 3
    assert torch.equal(other.generator.get_state(), planner.generator.get_state())


def test_a_random_stream_saved_on_another_device_reseeds_with_a_warning_on_resume():
    """A checkpoint written on a GPU (a CUDA generator's 16-byte state) resumes on a CPU: the
    stream is reseeded from the saved one, the same way every time, and says so."""
    model = constant_ensemble([[0.0, 0.0]], [0.0], [[1e-3, 1e-3, 1e-3]])
    config = DynaConfig(rollout_length=1, rollout_batch_size=20, agent={"hidden": 16, "batch_size": 8}, seed=0)
    state = MBPO(model, SPEC, config).state_dict()
    state["generator"] = torch.arange(16, dtype=torch.uint8)  # (a CUDA generator's: seed and offset)
    resumed = []
    for _ in range(2):
        planner = MBPO(model, SPEC, config)
        with pytest.warns(UserWarning, match=r"random stream \(16 bytes\) is not a cpu generator's .* reseeded"):
            planner.load_state_dict(state)
        resumed.append(planner.generator.get_state())
    assert torch.equal(resumed[0], resumed[1]) and not torch.equal(resumed[0], MBPO(model, SPEC, config).generator.get_state())
    state["generator"] = torch.arange(100, dtype=torch.uint8)  # (no generator's: damaged, an error as before)
    with pytest.raises(RuntimeError, match="RNG state size to be 100"):
        MBPO(model, SPEC, config).load_state_dict(state)


# ---------------------------------------------------------------- an MPC planner's learned value from imagination


def test_tsinf_gives_each_rollout_a_random_elite_held_over_the_horizon():
    """TS-infinity on two elites whose rewards are 0 and 1: a candidate's return is 0 or H (one elite
    the whole horizon), each elite scores half the rollouts, and which candidate gets which is drawn
    anew each plan, not fixed by its place among the candidates."""
    from planners import MPPI, MPPIConfig

    model = constant_ensemble(torch.zeros(2, O), [0.0, 1.0], torch.full((2, O + 1), 1e-4))
    planner = MPPI(model, SPEC, MPPIConfig(horizon=3, candidates=16, propagation="tsinf", value_learning=False,
                                           discount=1.0, seed=0))  # fmt: skip
    actions = torch.zeros(1, 16, 3, A)
    patterns = [planner.evaluate(torch.zeros(1, O), actions)[0].round() for _ in range(4)]
    for returns in patterns:
        assert sorted(returns.tolist()) == [0.0] * 8 + [3.0] * 8
    assert len({tuple(r.tolist()) for r in patterns}) > 1


def mppi_with_imagination(model, **imagination) -> "planners.MPPI":
    from planners import MPPI, MPPIConfig

    config = MPPIConfig(horizon=2, candidates=8, value_agent={"hidden": 16, "batch_size": 64}, seed=0,
                        value_imagination={"rollout_length": 1, "rollout_batch_size": 100, **imagination})  # fmt: skip
    return MPPI(model, SPEC, config)


@pytest.mark.parametrize("ratio", [0.25, 1.0])
def test_an_mpc_value_learns_from_real_and_penalised_imagined_rows(ratio):
    """value_imagination: real_ratio of each value batch real, the rest rolled out with MOPO's penalty
    (obs-std norms 0.5 and 1.0 over the two members: imagined reward 1 - 0.5 x 1.0); 1.0: real only."""
    std = torch.tensor([[0.3, 0.4, 1e-3], [0.6, 0.8, 1e-3]])
    planner = mppi_with_imagination(constant_ensemble(torch.zeros(2, O), [1.0, 1.0], std), real_ratio=ratio,
                                    penalty=0.5)  # fmt: skip
    planner.observe(real_data(100, reward=1000.0))
    assert (planner.imagination is None) == (ratio == 1.0)
    batch = planner.learning_batch(planner.value_agent)
    real = batch["reward"] > 500
    assert len(batch) == 64 and real.sum() == round(64 * ratio)
    assert torch.allclose(batch["reward"][~real], torch.full(((~real).sum(),), 0.5), atol=0.02)
    stats = planner.learn(3)
    assert planner.value_agent.updates == 3 and math.isfinite(stats["critic_loss"])
    assert ("penalty_mean" in stats) == (ratio < 1) and stats.get("penalty_mean", 1.0) == pytest.approx(1.0, abs=1e-3)


def test_an_mpc_value_imagines_with_the_policy_of_the_agent_it_trains():
    """A background learner trains a copy of the value: the rollouts follow that copy's policy."""
    import copy

    planner = mppi_with_imagination(constant_ensemble([[0.0, 0.0]], [0.0], [[1e-3, 1e-3, 1e-3]]), real_ratio=0.5)
    planner.observe(real_data(100))
    trained = copy.deepcopy(planner.value_agent)
    trained.act = lambda obs, deterministic=False: torch.full((obs.shape[0], A), 0.7)
    planner.learning_batch(trained)
    assert torch.equal(planner.imagination.model_buffer.data()["action"], torch.full((100, A), 0.7))


def test_an_mpc_values_imagination_rolls_out_afresh_after_a_refit_and_on_resume():
    model = constant_ensemble([[0.0, 0.0]], [0.0], [[1e-3, 1e-3, 1e-3]])
    planner = mppi_with_imagination(model, real_ratio=0.5, rollout_every=5)
    planner.observe(real_data(100))
    planner.learn(3)  # one round, before the first update
    assert len(planner.imagination.model_buffer) == 100
    planner.imagination.expire()  # (what update() does after a refit)
    planner.learn(1)
    assert len(planner.imagination.model_buffer) == 200 and planner.imagination.updates_since_rollout == 1
    other = mppi_with_imagination(model, real_ratio=0.5, rollout_every=5)
    other.observe(real_data(100))
    other.load_state_dict(planner.state_dict())
    torch.testing.assert_close(other.imagination.generator.get_state(), planner.imagination.generator.get_state())
    other.learn(1)  # (the model buffer is not saved: a round before the first update)
    assert len(other.imagination.model_buffer) == 100
    assert not torch.equal(planner.generator.get_state(), planner.imagination.generator.get_state())  # two streams


def test_an_mpc_values_imagination_refuses_unknown_or_idle_settings():
    model = constant_ensemble([[0.0, 0.0]], [0.0], [[1e-3, 1e-3, 1e-3]])
    with pytest.raises(ValueError, match="planner.value_imagination.lambda"):
        make_planner("mppi", model, SPEC, value_imagination={"lambda": 2.5})
    with pytest.raises(ValueError, match="real_ratio must be in"):
        make_planner("mppi", model, SPEC, value_imagination={"real_ratio": 1.5})
    with pytest.raises(ValueError, match="needs value_learning=True"):
        make_planner("mppi", model, SPEC, value_learning=False, value_imagination={"real_ratio": 0.5})
