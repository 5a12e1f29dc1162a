"""Implicit hyper-gradient with a K-truncated Neumann series (CMCS eqs 13-14; Lorraine et al. 2020).

For a lower problem θ*(φ) = argmin_θ L(θ, φ) and an upper loss L_dev(θ), the implicit function theorem
gives (eq 13)

    ∇_φ L_dev(θ*(φ)) = -∇_θ L_dev · (∇²_θ L)^{-1} · ∇_φ ∇_θ L |_(φ, θ*(φ)),

and the inverse Hessian is replaced by a truncated Neumann series (eq 14)

    (∇²_θ L)^{-1} ≈ γ Σ_{j=0..K} (I - γ ∇²_θ L)^j .

CMCS's eq 14 is the γ = 1 case; Lorraine et al. (the paper's [22]) scale by the lower learning rate,
and that is the default here (`neumann_scaling: lr`, issue 27): with γ = η1 the j-th term is one step
of the lower problem's SGD (Algorithm 1 line 8), so γ Σ_{j=0..K} (I − γH)^j with K + 1 = H terms is the
derivative of the H lower steps Algorithm 1 takes between two upper steps, taken after those steps at
the current θ (the Hessian and mixed term of the last lower batch standing in for each of the H).
That is a quantity with a ground truth: the finite difference of L_dev over the H steps (oracle.py).
At the recipe's η1 = 2e-5, H = 10, K = 9 it agrees with that oracle in sign and within ×2 on 768/1024-d
heads and on a small transformer with an indefinite Hessian (tests/papers/cmcs/test_cmcs_oracle.py,
benchmarks/results/cmcs_hypergrad_agreement.json). It cannot diverge at these values: with
γ|λ| ≤ 2e-5·|λ| ≪ 1 the growth along a negative eigenvalue is (1 + γ|λ_min|)^K ≈ 1, so no damping is
needed. Only Hessian-vector products are formed, never the Hessian itself.

Other readings, kept as options. `neumann_scaling: power` (γ = 1/λ̂_max, `power_lambda_max`; the old
default, K = 60) sums the series of the converged θ*(φ): it matches eq 13's exact inverse on a
positive-definite problem (test_cmcs_hypergrad.py), is ~100× the H-step response on the heads above,
and far from a minimum the Hessian is indefinite, so a negative eigenvalue makes it grow like
(1 + γ|λ_min|)^K (a quarter-width rehearsal: ×1.67 a term, 7e13 at K = 60; nearly every upper step
clipped). `damping="min_eigen"` (power scaling only) estimates λ_min by power iteration on
λ̂_max·I − H and uses H + δI with δ = 2·max(0, −λ̂_min), γ = 1/(λ̂_max + δ): the series then converges
to the damped (Levenberg–Marquardt) inverse, not eq 13's exact one, wherever λ_min < 0.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def neumann_inverse_hvp(lower_grad: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
                        vector: Sequence[torch.Tensor], k: int, scale: float = 1.0, damping: float = 0.0) -> list[torch.Tensor]:
    """p ≈ v · (∇²_θ L + δI)^{-1} as γ Σ_{j=0..K} v (I - γ(H + δI))^j (eq 14; δ = `damping`, 0 in eq 14);
    `lower_grad` = ∇_θ L built with create_graph=True, so each H·v is one more backward pass. H is
    symmetric, so v·H = H·v."""
    v = [x.detach() for x in vector]
    total = [x.clone() for x in v]  # the j = 0 term
    for _ in range(k):
        hv = _hvp(lower_grad, params, v)
        v = [vi - scale * (hi + damping * vi) for vi, hi in zip(v, hv)]  # v (I - γ(H + δI))^j
        total = [ti + vi for ti, vi in zip(total, v)]
    return [scale * ti for ti in total]


def _hvp(lower_grad, params, vector) -> list[torch.Tensor]:
    return [h.detach() for h in torch.autograd.grad(lower_grad, params, grad_outputs=vector, retain_graph=True)]


def _power_iteration(apply, start: Sequence[torch.Tensor], iters: int) -> float:
    """‖M u‖ for the last unit u of `iters` power iterations of a symmetric operator `apply` from `start`."""
    u = [x.detach().clone() for x in start]
    norm = torch.sqrt(sum((x.double() ** 2).sum() for x in u))
    estimate = 0.0
    for _ in range(iters):
        if not torch.isfinite(norm) or norm == 0:
            break
        u = [x / norm.to(x.dtype) for x in u]
        mu = apply(u)
        norm = torch.sqrt(sum((x.double() ** 2).sum() for x in mu))
        estimate, u = float(norm), mu
    return estimate


def power_lambda_max(lower_grad: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
                     start: Sequence[torch.Tensor], iters: int) -> float:
    """|λ|_max of ∇²_θ L by `iters` power iterations from `start` (the upper gradient: deterministic, and
    it only has to overlap the top eigenvector). Returns ‖H u‖ for the last unit u, which is ≥ the Rayleigh
    quotient, so γ = 1/λ̂ keeps γλ_max close to 1 (the series converges for γλ_max < 2)."""
    return _power_iteration(lambda u: _hvp(lower_grad, params, u), start, iters)


def power_lambda_min(lower_grad: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
                     start: Sequence[torch.Tensor], lambda_max: float, iters: int) -> float:
    """λ_min of ∇²_θ L as λ̂_max − μ̂, μ̂ the top eigenvalue of λ̂_max·I − H (positive semi-definite when
    λ̂_max ≥ |λ|_max) by `iters` power iterations; ‖M u‖ ≥ the Rayleigh quotient, so λ̂_min errs low
    (more damping, never less)."""
    def shifted(u):
        return [lambda_max * x - h for x, h in zip(u, _hvp(lower_grad, params, u))]

    return lambda_max - _power_iteration(shifted, start, iters)


def implicit_hypergradient(upper_grad: Sequence[torch.Tensor | None], lower_grad: Sequence[torch.Tensor | None],
                           params: Sequence[torch.Tensor], hyper: Sequence[torch.Tensor], k: int,
                           scale: float | None = 1.0, direct: Sequence[torch.Tensor | None] | None = None,
                           power_iters: int = 8, info: dict | None = None, damping: str = "none") -> list[torch.Tensor]:
    """∇_φ L_dev by eqs 13-14, one tensor per hyper-parameter in `hyper`.

    upper_grad: ∇_θ L_dev (any graph; only values are used), None where L_dev does not reach a parameter;
    lower_grad: ∇_θ L(θ, φ) with create_graph=True (a function of θ and φ), None where L does not reach;
    direct: optional ∂L_dev/∂φ added to the result (zero in CMCS: eq 13 has only the indirect term);
    scale: γ, or None for γ = 1/λ̂_max by `power_iters` power iterations; `info` (if given) receives
    lambda_max and gamma (and lambda_min, damping); damping: "min_eigen" (with scale None) damps an
    indefinite Hessian by its estimated λ_min (module docstring), "none" is eq 14.
    Parameters that the lower loss does not reach drop out (their Hessian rows are zero)."""
    keep = [i for i, g in enumerate(lower_grad) if g is not None and g.requires_grad]
    grads = [lower_grad[i] for i in keep]
    kept_params = [params[i] for i in keep]
    upper = [upper_grad[i] if upper_grad[i] is not None else torch.zeros_like(params[i]) for i in keep]
    delta = 0.0
    if scale is None:
        lam = power_lambda_max(grads, kept_params, upper, power_iters)
        if damping == "min_eigen" and lam > 0 and math.isfinite(lam):
            lam_min = power_lambda_min(grads, kept_params, upper, lam, power_iters)
            # 2|λ_min|: H + δI is then positive definite with its smallest eigenvalue ≥ |λ_min| (δ = |λ_min|
            # would leave a zero eigenvalue, whose direction the series sums without bound)
            delta = 2.0 * max(0.0, -lam_min) if math.isfinite(lam_min) else 0.0
            if info is not None:
                info["lambda_min"], info["damping"] = lam_min, delta
        scale = 1.0 / (lam + delta) if lam > 0 and math.isfinite(lam) else 1.0  # λ̂ = 0: H vanishes on this Krylov space
        if info is not None:
            info["lambda_max"] = lam
    elif damping != "none":
        raise ValueError("damping needs the power-iteration scale (scale=None)")
    if info is not None:
        info["gamma"] = scale
    p = neumann_inverse_hvp(grads, kept_params, upper, k, scale, delta)
    mixed = torch.autograd.grad(grads, list(hyper), grad_outputs=p, retain_graph=False, allow_unused=True)  # p · ∇_φ∇_θ L
    out = []
    for i, (h, m) in enumerate(zip(hyper, mixed)):
        value = -m.detach() if m is not None else torch.zeros_like(h)  # eq 13: the minus sign
        if direct is not None and direct[i] is not None:
            value = value + direct[i].detach()
        out.append(value)
    return out
