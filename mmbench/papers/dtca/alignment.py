"""Token-patch alignment (DTCA §2.2, eqs 13–21): the Wasserstein distance between a sentence's token
states and its image's patch states, and the released code's IPOT variant.

Paper: masses 1/N and 1/M (eqs 13–14), cost = eq (15), the flow F of the optimal
transport problem (eqs 16–20) solved exactly by `ot.emd` (network simplex), loss = work / total flow
(eq 21). F is the argmin, so by the envelope theorem ∂L/∂δ = F / ΣF: computing L as Σ F⊙δ / ΣF with F
held fixed gives `ot.emd2`'s value and gradient, and the gradient reaches both encoders through δ.
Both masses sum to 1, so the min() of eq 20 is 1 and the balanced solver is the exact solution.

Released code (official-code.md §2d): UNITER's IPOT (proximal point OT, β = 0.5, 50 iterations,
k = 1) on the cosine cost 1 − cos(t, v) of raw states, T detached, distance = trace(Cᵀ T).
"""

from __future__ import annotations

import numpy as np
import ot
import torch
import torch.nn.functional as F


# eq (15) readings (`model.ot_cost`): (norm power p, divide by d_h)
#   unit  ‖t̂/‖t̂‖ − v̂/‖v̂‖‖²  = 2(1 − cos): a distance between normalised vectors, in [0, 4] (paper default)
#   nmse  1/d_h ‖t̂/‖t̂‖² − v̂/‖v̂‖²‖²  (literal print): ~1e-6 at LayerNorm-scale norms, falls as norms grow
#   nmse_unit  1/d_h ‖t̂/‖t̂‖ − v̂/‖v̂‖‖²  (unit vectors, with the 1/d_h)
EQ15_READINGS = {"unit": (1, False), "nmse": (2, True), "nmse_unit": (1, True)}


def nmse_cost(text: torch.Tensor, image: torch.Tensor, power: int = 2, per_dim: bool = True) -> torch.Tensor:
    """eq (15): δ[n, m] = [1/d_h] ‖t̂_n/‖t̂_n‖₂^p − v̂_m/‖v̂_m‖₂^p‖², p = 2 and 1/d_h as printed; p = 1
    without 1/d_h is the `unit` reading. text [N, d], image [M, d] -> [N, M]."""
    t = text / text.norm(dim=-1, keepdim=True).clamp_min(1e-6).pow(power)
    v = image / image.norm(dim=-1, keepdim=True).clamp_min(1e-6).pow(power)
    # ‖t − v‖² = ‖t‖² + ‖v‖² − 2 t·v: a matmul, not an [N, M, d] difference tensor
    squared = (t.pow(2).sum(-1, keepdim=True) + v.pow(2).sum(-1).unsqueeze(0) - 2 * t @ v.T).clamp_min(0)
    return squared / text.shape[-1] if per_dim else squared


def eq15_cost(text: torch.Tensor, image: torch.Tensor, reading: str = "unit") -> torch.Tensor:
    """δ of eq (15) under one of `EQ15_READINGS` (see the recipe's assumptions for the argument)."""
    power, per_dim = EQ15_READINGS[reading]
    return nmse_cost(text, image, power=power, per_dim=per_dim)


def cosine_cost(text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """1 − cos(t̂_n, v̂_m) (the released code's cost, on raw states). [..., N, d], [..., M, d] -> [..., N, M]."""
    return 1 - F.normalize(text, dim=-1, eps=1e-5) @ F.normalize(image, dim=-1, eps=1e-5).transpose(-1, -2)


def emd_distance(cost: torch.Tensor) -> torch.Tensor:
    """eqs (13)–(21) for one sentence–image pair: uniform masses, exact optimal flow, work / flow."""
    n, m = cost.shape
    text_mass = np.full(n, 1.0 / n)  # eq (13): w^t_n = 1/N
    image_mass = np.full(m, 1.0 / m)  # eq (14): w^v_m = 1/M
    flow = ot.emd(text_mass, image_mass, cost.detach().double().cpu().numpy())  # eqs (16)–(20)
    flow = torch.as_tensor(flow, dtype=cost.dtype, device=cost.device)
    return (flow * cost).sum() / flow.sum()  # eq (21)


def wasserstein_loss(text: torch.Tensor, image: torch.Tensor, text_mask: torch.Tensor, cost: str = "unit") -> torch.Tensor:
    """Mean over the batch of eq (21). text [B, L, d] with text_mask [B, L] marking t̂_1..t̂_N,
    image [B, M, d] (every patch). Sentences with no token in the mask contribute 0."""
    losses = []
    for b in range(text.shape[0]):
        tokens = text[b][text_mask[b]]
        if tokens.shape[0] == 0:
            losses.append(text.new_zeros(()))
            continue
        if cost == "cosine":
            delta = cosine_cost(tokens, image[b])
        else:
            delta = eq15_cost(tokens, image[b], cost)
        losses.append(emd_distance(delta))
    return torch.stack(losses).mean()


@torch.no_grad()
def ipot_plan(cost: torch.Tensor, x_valid: torch.Tensor, y_valid: torch.Tensor, beta: float = 0.5,
              iterations: int = 50, k: int = 1) -> torch.Tensor:
    """IPOT (Xie et al. 2019) as in UNITER, batched. cost [B, N, M]; x_valid [B, N], y_valid [B, M]
    mark the points in each problem (uniform masses over them). Returns the plan [B, N, M]."""
    valid = x_valid.unsqueeze(2) & y_valid.unsqueeze(1)
    x_count = x_valid.sum(1, keepdim=True).to(cost.dtype)  # [B, 1]
    y_count = y_valid.sum(1, keepdim=True).to(cost.dtype)
    kernel = torch.exp(-cost / beta) * valid
    plan = valid.to(cost.dtype)
    sigma = x_valid.to(cost.dtype) / x_count.clamp_min(1)
    for _ in range(iterations):
        q = kernel * plan  # proximal step: Q = A ⊙ T
        for _ in range(k):
            delta = _safe_inverse(y_count * torch.einsum("bnm,bn->bm", q, sigma), y_valid)
            sigma = _safe_inverse(x_count * torch.einsum("bnm,bm->bn", q, delta), x_valid)
        plan = sigma.unsqueeze(2) * q * delta.unsqueeze(1)
    return plan * valid


def _safe_inverse(value: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.where(valid & (value > 0), 1.0 / value.clamp_min(1e-30), torch.zeros_like(value))


def ipot_loss(text: torch.Tensor, image: torch.Tensor, text_mask: torch.Tensor, beta: float = 0.5,
              iterations: int = 50, k: int = 1) -> torch.Tensor:
    """The released code's OT term: mean over the batch of trace(Cᵀ T) with the cosine cost and the
    IPOT plan held fixed. `text_mask` marks the text positions taking part (see the model's
    `ot_text_tokens` for the released code's inverted mask)."""
    image_mask = torch.ones(image.shape[:2], dtype=torch.bool, device=image.device)
    cost = cosine_cost(text, image)
    cost = cost.masked_fill(~(text_mask.unsqueeze(2) & image_mask.unsqueeze(1)), 0)
    plan = ipot_plan(cost.detach(), text_mask, image_mask, beta, iterations, k)
    return (cost * plan).sum((1, 2)).mean()
