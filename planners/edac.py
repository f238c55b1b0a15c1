"""EDAC's pieces (An et al. 2021): the gradient-diversity term, its initialisation, and the
critic step with the diversity term's gradient in closed form.

The diversity term reads the critics' action-gradients g = dQ/da, so autograd differentiates it
by a double backward (the graph of g's backward, then that graph's own backward). For a ReLU MLP
with weights stored [in, out] (W_l [H, H], w_out [H, 1]), g is a product of the weights through
fixed masks,
    g = W1a m1 W2 m2 ... WL mL w_out   (m_l: layer l's ReLU mask, a diagonal; W1a = W1[O:], [A, H]),
so its derivative is one more pass along that chain. And the TD loss's backward needs that same
chain: with e = Q - target, dL/dpre_l = (2 e / B) chain_l, where chain_l = dQ/dpre_l is the
chain's vector at layer l. `critic_grads` runs forward, the chain down, the diversity's pass up,
and every weight gradient once: both terms' share of W_l's in one product with chain_l.
Shapes: N critics, B rows, H hidden units, O obs dims, A action dims.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from planners.sac import Actor, CriticEnsemble

EDAC_HIDDEN_BIAS, EDAC_ACTOR_OUT, EDAC_CRITIC_OUT = 0.1, 1e-3, 3e-3  # EDAC's initialisation


def cosine_diversity(grad: Tensor) -> Tensor:
    """EDAC's term from the critics' action-gradients grad [N, B, A]: the mean over rows of the
    summed pairwise cosine similarity between critics, divided by N - 1."""
    n = grad.shape[0]
    unit = grad / (grad.norm(dim=-1, keepdim=True) + 1e-10)
    cosine = torch.einsum("iba,jba->bij", unit, unit)
    off_diagonal = cosine.sum((1, 2)) - cosine.diagonal(dim1=1, dim2=2).sum(-1)
    return off_diagonal.mean() / (n - 1)


def cosine_diversity_grad(grad: Tensor) -> tuple[Tensor, Tensor]:
    """`cosine_diversity` of grad [N, B, A] and its gradient w.r.t. grad [N, B, A], in closed form.

    With u_i = g_i / (|g_i| + eps) and S = sum_i u_i, the term is mean_b (|S|^2 - sum_i |u_i|^2) / (N - 1),
    so v = d/du_i = 2 (S - u_i) / (B (N - 1)), and d/dg_i = (v - (u_i . v) g_i / |g_i|) / (|g_i| + eps);
    a g_i of exactly zero gets v / eps, as autograd gives it."""
    n, b = grad.shape[:2]
    norm = grad.norm(dim=-1, keepdim=True)
    unit = grad / (norm + 1e-10)
    total = unit.sum(0)  # [B, A]
    diversity = (total.square().sum() - unit.square().sum()) / (b * (n - 1))
    v = (total - unit) * (2 / (b * (n - 1)))
    radial = (unit * v).sum(-1, keepdim=True) * grad / norm.clamp_min(1e-30)
    return diversity, (v - radial) / (norm + 1e-10)


def gradient_diversity(q: Tensor, action: Tensor) -> Tensor:
    """EDAC's term by autograd: q [N, B] computed from action [N, B, A] (requires grad); twice
    differentiable (the definition `critic_grads` is checked against)."""
    (grad,) = torch.autograd.grad(q.sum(), action, create_graph=True)
    return cosine_diversity(grad)


@torch.no_grad()
def edac_init(actor: Actor, critics: CriticEnsemble) -> None:
    """EDAC's initialisation (as RAVL's code runs it): hidden biases 0.1; the actor's output layer
    uniform in +-1e-3 and the critics' in +-3e-3 (weights and biases)."""
    for layer in list(actor.net)[:-1:2]:
        layer.bias.fill_(EDAC_HIDDEN_BIAS)
    actor.net[-1].weight.uniform_(-EDAC_ACTOR_OUT, EDAC_ACTOR_OUT)
    actor.net[-1].bias.uniform_(-EDAC_ACTOR_OUT, EDAC_ACTOR_OUT)
    for bias in list(critics.biases)[:-1]:
        bias.fill_(EDAC_HIDDEN_BIAS)
    critics.weights[-1].uniform_(-EDAC_CRITIC_OUT, EDAC_CRITIC_OUT)
    critics.biases[-1].uniform_(-EDAC_CRITIC_OUT, EDAC_CRITIC_OUT)


def relu_backward(grad: Tensor, output: Tensor) -> Tensor:
    """grad where the ReLU's output is > 0, else 0 (autograd's own op: 10x a bool mask's product
    or masked_fill on bf16 here)."""
    return torch.ops.aten.threshold_backward(grad, output, 0)


@torch.no_grad()
def critic_grads(critics: CriticEnsemble, obs: Tensor, action: Tensor, target: Tensor, eta: float,
                 compiled: bool = False) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Set critics' .grad to the gradient of sum_n mean_b (Q_n - target)^2 + eta x diversity.

    obs [B, O], action [B, A], target [B] -> (loss, Q [N, B], diversity), the losses 0-d.
    The ReLU critics of `CriticEnsemble`; with precision "bf16" the hidden layers' products run
    on bfloat16 operands and the output layer in fp32, as its forward does. compiled: through
    torch.compile (inductor fuses the elementwise passes between the products: 10.8 -> 8.3 ms a
    step for 10 critics of 3 x 256 in bf16 here; the first call compiles for some seconds, and
    where compiling fails the step warns once and runs eagerly).
    """
    weights, biases = list(critics.weights), list(critics.biases)
    assert len(weights) >= 2, "a critic with no hidden layer has no ReLU chain"
    args = ([w.detach() for w in weights], [b.detach() for b in biases], obs, action, target, float(eta),
            critics.precision == "bf16")  # fmt: skip
    loss, q, diversity, grads = _run_grads(args, compiled)
    for param, grad in zip([*weights, *biases], grads):
        param.grad = grad.to(param.dtype)
    return loss, q, diversity


def _grads(weights: list[Tensor], biases: list[Tensor], obs: Tensor, action: Tensor, target: Tensor, eta: float,
           bf16: bool) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:  # fmt: skip
    """`critic_grads` as a pure function of the critics' parameters (weights [N, in, out], biases
    [N, out]): (loss, Q [N, B], diversity, the gradients of weights then biases)."""
    n, b, o, depth = weights[0].shape[0], obs.shape[0], obs.shape[-1], len(weights) - 1
    low = torch.bfloat16 if bf16 else torch.float32
    w = [weight.to(low) for weight in weights[:-1]]  # hidden layers [N, in, H], in the products' dtype
    w_out = weights[-1]  # [N, H, 1]
    # forward: inputs[l] is layer l's input [N, B, in], inputs[l + 1] its ReLU's output
    x = torch.cat([obs, action], -1).to(low)
    inputs = [x.expand(n, *x.shape)]
    for layer in range(depth):
        inputs.append(torch.baddbmm(biases[layer].to(low).unsqueeze(1), inputs[-1], w[layer]).relu_())
    top = inputs[-1].float()  # [N, B, H]
    q = (top * w_out.mT).sum(-1) + biases[-1]  # [N, B] (bmm runs an fp32 product of output width 1 5x slower)
    error = q - target
    td_loss = error.square().mean(1).sum()
    # the chain down: chain[l] = dQ/dpre_l [N, B, H]; g = dQ/da [N, B, A]
    chain = [relu_backward(w_out.mT.to(low).expand(n, b, -1), inputs[depth])]
    for layer in range(depth - 1, 0, -1):
        chain.insert(0, relu_backward(torch.bmm(chain[0], w[layer].mT), inputs[layer]))
    w_action = w[0][:, o:]  # [N, A, H]
    g = torch.bmm(chain[0], w_action.mT).float()
    diversity, dg = cosine_diversity_grad(g)
    # the diversity's pass up the chain: d_chain = d(term)/d(chain[l]); weight gradients as it goes
    dg_low = (eta * dg).to(low)  # d(eta x term)/dg [N, B, A]
    d_chain = torch.bmm(dg_low, w_action)  # [N, B, H]
    up = [None] * depth  # d(term)/d(chain_l W_l^T) [N, B, H], masked by m_{l-1}; None at layer 0
    for layer in range(1, depth):  # chain[l-1] = m_{l-1} * (chain[l] @ W_l^T)
        up[layer] = relu_backward(d_chain, inputs[layer])
        d_chain = torch.bmm(up[layer], w[layer])
    d_out = relu_backward(d_chain, inputs[depth]).float().sum(1)  # [N, H] (summed in fp32)
    # weight gradients: the TD error's, input_l^T (e * chain_l), plus the diversity's, up_l^T chain_l,
    # as one product (e * input_l + up_l)^T chain_l
    e = 2 * error / b  # dL/dQ [N, B]
    e_low = e.to(low).unsqueeze(-1)  # [N, B, 1]
    grads_w, grads_b = [], []
    inputs.pop()
    for layer in range(depth):
        left = e_low * inputs[layer] if up[layer] is None else torch.addcmul(up[layer], e_low, inputs[layer])
        grad = torch.bmm(left.mT, chain[layer])
        if layer == 0:
            grad[:, o:] += torch.bmm(dg_low.mT, chain[0])  # g's dependence on W1's action rows
        grads_w.append(grad)
        grads_b.append((e_low * chain[layer]).sum(1))  # (a reduced-precision sum accumulates in fp32)
    grads_w.append(((top * e.unsqueeze(-1)).sum(1) + d_out).unsqueeze(-1))
    grads_b.append(e.sum(1, keepdim=True))
    return td_loss + eta * diversity, q, diversity, [*grads_w, *grads_b]


_compiled: dict = {}  # "grads": `_grads` through torch.compile (made at the first compiled call); "failed"


def _run_grads(args: tuple, compiled: bool) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """`_grads(*args)`, through torch.compile when `compiled` (each new shape compiles at its first
    call) unless compiling failed in this process (it needs a C++ compiler on a CPU): the first
    failure warns and the eager path takes over."""
    if not compiled or "failed" in _compiled:
        return _grads(*args)
    if "grads" not in _compiled:
        _compiled["grads"] = torch.compile(_grads, dynamic=False)
    try:
        return _compiled["grads"](*args)
    except Exception as e:  # noqa: BLE001  (inductor's failures have many types; a real error recurs eagerly)
        _compiled["failed"] = True
        warnings.warn(f"torch.compile of EDAC's critic step failed here ({type(e).__name__}: {e}); it runs "
                      "eagerly (planner.agent.compile_critic_step=false skips the attempt)", stacklevel=3)
        return _grads(*args)
