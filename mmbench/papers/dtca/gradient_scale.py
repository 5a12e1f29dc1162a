"""How hard each term of eq (22) pulls on a set of tensors: ‖∇ L_term‖ per group of tensors (the
encoders' parameters, or their output states), and the ratio of two terms' norms (issue 13 item 1,
issue 28 item 2: is the token-patch alignment L_WD alive next to the CRF loss L_CM?).

Used by tests/papers/dtca/test_dtca_alignment_scale.py (at init, synthetic states or shallow
encoders) and benchmarks/dtca_alignment_strength.py (paper-width encoders, at init and after an
epoch). The model's train/eval mode is the caller's: measure in eval mode for dropout-free numbers.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

# eq (22)'s terms as DTCAModel.forward names them
L_CM, L_TO, L_WD = "crf_loss", "text_loss", "ot_loss"


def term_gradient_norms(model: torch.nn.Module, batches: Iterable[dict], groups: dict[str, list[torch.Tensor]],
                        terms: tuple[str, ...] = (L_CM, L_WD)) -> dict:
    """For each term, ‖∇ (mean over `batches` of the term)‖ over each group's tensors, over all groups
    together (`all`), and per batch; plus the mean value of every loss the model returns. One forward
    per batch; a tensor a term does not reach counts as a zero gradient."""
    names = list(groups)
    tensors = [t for name in names for t in groups[name]]
    owner = [name for name in names for _ in groups[name]]
    batches = list(batches)
    summed = {term: [None] * len(tensors) for term in terms}
    per_batch: list[dict] = []
    losses: dict[str, float] = {}
    for batch in batches:
        out = model(batch)
        for key, value in out.items():
            losses[key] = losses.get(key, 0.0) + float(value.detach()) / len(batches)
        row = {}
        for i, term in enumerate(terms):
            grads = torch.autograd.grad(out[term], tensors, retain_graph=i + 1 < len(terms), allow_unused=True)
            row[term] = _group_norms(grads, owner, names)
            for j, g in enumerate(grads):
                if g is not None:
                    g = g.detach() / len(batches)
                    summed[term][j] = g if summed[term][j] is None else summed[term][j] + g
        per_batch.append(row)
    return {"norms": {term: _group_norms(summed[term], owner, names) for term in terms}, "per_batch": per_batch,
            "losses": losses, "batches": len(batches)}


def _group_norms(grads, owner: list[str], names: list[str]) -> dict[str, float]:
    squares = dict.fromkeys(names, 0.0)
    for g, name in zip(grads, owner):
        if g is not None:
            squares[name] += float(g.double().pow(2).sum())
    return {**{name: math.sqrt(s) for name, s in squares.items()}, "all": math.sqrt(sum(squares.values()))}


def ratios(norms: dict[str, dict[str, float]], numerator: str = L_WD, denominator: str = L_CM,
           weight: float = 1.0) -> dict[str, float]:
    """weight · ‖∇ numerator‖ / ‖∇ denominator‖ per group (e.g. β·‖∇L_WD‖ / ‖∇L_CM‖ with weight=β)."""
    return {group: weight * norms[numerator][group] / norms[denominator][group] for group in norms[denominator]}
