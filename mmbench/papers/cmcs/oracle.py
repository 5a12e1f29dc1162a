"""A ground truth for the implicit hypergradient (eqs 13-14) that needs no closed form: the finite
difference of L_dev after the H lower steps of Algorithm 1 (issue 27).

    ∂L_dev/∂φ_i ≈ [L_dev(θ_H(φ + ε e_i)) − L_dev(θ_H(φ − ε e_i))] / 2ε

where θ_H(φ) is what H lower steps (Algorithm 1 lines 5-9: θ ← θ − η1 ∇_θ L(θ, φ), eq 12) give from
the same starting state on the same batches in the same order. This is the quantity the implicit
gradient approximates in the H-step reading of Lorraine et al. 2020 (the paper's [22]), so comparing
the two at the recipe's η1, H, K needs no Hessian inverse and works on any model the CPU can run
(tests/papers/cmcs/test_cmcs_oracle.py; benchmarks/cmcs_hypergrad_agreement.py).

Everything is functional (a parameter dict and `torch.func.functional_call`), so a model's state is
never mutated and each ±ε run starts from exactly the same θ_0. Like eq 13, the dev loss's own weights
φ_b (eq 10) are held at the unperturbed φ: only the dependence through θ is differentiated.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

Params = dict[str, torch.Tensor]
LowerLoss = Callable[[Params, torch.Tensor, object], torch.Tensor]  # (θ, φ, batch) -> L(θ, φ) of eq 9


def sgd_lower_steps(theta0: Params, phi: torch.Tensor, lower_loss: LowerLoss, batches: Sequence, lr: float) -> Params:
    """H = len(batches) lower steps θ ← θ − η1 ∇_θ L(θ, φ) (Algorithm 1 line 8, eq 12) from θ_0."""
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in theta0.items()}
    for batch in batches:
        grads = torch.autograd.grad(lower_loss(theta, phi, batch), list(theta.values()), allow_unused=True)
        theta = {k: (v - lr * g if g is not None else v).detach().requires_grad_(True)
                 for (k, v), g in zip(theta.items(), grads)}
    return theta


def unrolled_hypergradient(theta0: Params, phi: torch.Tensor, lower_loss: LowerLoss, dev_loss: Callable[[Params], torch.Tensor],
                           batches: Sequence, lr: float, eps: float = 1e-3) -> torch.Tensor:
    """dL_dev(θ_H(φ))/dφ by central differences over the H lower steps (one entry per component of φ)."""
    out = torch.zeros_like(phi)
    for i in range(phi.numel()):
        values = []
        for sign in (1.0, -1.0):
            shifted = phi.detach().clone()
            shifted.view(-1)[i] += sign * eps
            theta = sgd_lower_steps(theta0, shifted, lower_loss, batches, lr)
            values.append(float(dev_loss(theta)))
        out.view(-1)[i] = (values[0] - values[1]) / (2 * eps)
    return out


def implicit_estimate(theta: Params, phi: torch.Tensor, lower_loss: LowerLoss, dev_loss: Callable[[Params], torch.Tensor],
                      batch, k: int, scale: float | None, damping: str = "none", power_iters: int = 8, info: dict | None = None) -> torch.Tensor:
    """The implicit hypergradient (eqs 13-14, `implicit_hypergradient`) at θ on the lower loss of `batch`,
    the functional counterpart of `CMCS.upper_step` for the oracle comparisons."""
    from mmbench.papers.cmcs.hypergrad import implicit_hypergradient

    theta = {k_: v.detach().requires_grad_(True) for k_, v in theta.items()}
    params = list(theta.values())
    upper = torch.autograd.grad(dev_loss(theta), params, allow_unused=True)  # ∇θ L_dev
    phi = phi.detach().clone().requires_grad_(True)
    lower = torch.autograd.grad(lower_loss(theta, phi, batch), params, create_graph=True, allow_unused=True)
    return implicit_hypergradient(upper, lower, params, [phi], k, scale, power_iters=power_iters, info=info, damping=damping)[0]


def agreement(estimates: Sequence[float], oracle: Sequence[float], factor: float = 2.0) -> dict:
    """Share of cases whose sign matches the oracle's, and whose magnitude is within `factor` of it."""
    pairs = list(zip(estimates, oracle))
    sign = sum(1 for e, o in pairs if e * o > 0) / len(pairs)
    magnitude = sum(1 for e, o in pairs if e * o > 0 and 1 / factor <= abs(e) / abs(o) <= factor) / len(pairs)
    return {"cases": len(pairs), "sign": sign, "within_factor": magnitude, "factor": factor}
