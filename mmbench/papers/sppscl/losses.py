"""SPP-SCL's objectives: intra-modal supervised contrastive losses (eqs 4-5), the inter-modal one
(eq 6), the two-step condition of Algorithm 1 and the IID/TTD/ITD distances of Figure 4.

Paper and released code differ in small ways; each is a switch (paper value first):
- `normaliser`: "batch" = eq (4)'s (1/B)·Σ_j over positives as printed; "positives" = the released
  code's mean over each anchor's positives (Khosla et al.), an anchor without positives adds 0.
- `self_in_denominator`: eq (4) sums k over the other B-1 samples ("the diagonal is excluded");
  the released code zeroes the diagonal logit, so exp(0) stays in the denominator.
- inter-modal `include_pair`: eq (6)'s mask 1[y_m = y_n, m != n] vs the code's i = j positive;
  `anchor`: which modality gives the rows.
- condition: cosine similarities (paper, "sim") vs sigmoid of raw dot products (code); the mask count
  with or without the diagonal; α·count vs int(α·count).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _reduce(log_prob: torch.Tensor, positives: torch.Tensor, normaliser: str) -> torch.Tensor:
    """-(1/B) Σ_i w_i Σ_j 1^{ij} log_prob_ij with w_i = 1/B (eq 4 as printed) or 1/|P(i)| (code)."""
    per_anchor = (positives * log_prob).sum(1)
    if normaliser == "batch":
        per_anchor = per_anchor / positives.shape[1]
    else:
        per_anchor = per_anchor / positives.sum(1).clamp(min=1)
    return -per_anchor.mean()


def intra_supcon(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07,
                 normaliser: str = "batch", self_in_denominator: bool = False) -> torch.Tensor:
    """Eqs (4)/(5): L_cl = -1/B Σ_i 1/B Σ_j 1[y_i=y_j, i≠j] log( exp(s(i,j)/τ) / Σ_{k≠i} exp(s(i,k)/τ) )."""
    z = F.normalize(features.float(), dim=1)
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = z @ z.t() / temperature  # cosine similarity s(i, j) / τ
    if self_in_denominator:
        logits = logits.masked_fill(eye, 0.0)  # released code: diagonal logit set to 0, kept in the sum
        denominator = torch.logsumexp(logits, dim=1, keepdim=True)
    else:
        denominator = torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - denominator
    positives = ((labels[:, None] == labels[None, :]) & ~eye).float()  # Intra-Mask 1^{ij}
    return _reduce(log_prob.masked_fill(eye, 0.0), positives, normaliser)


def inter_supcon(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07,
                 normaliser: str = "batch", include_pair: bool = False, anchor: str = "image") -> torch.Tensor:
    """Eq (6): L_clm = -1/B Σ_m 1/B Σ_n 1^{mn} log( exp(s(m,n)/τ) / Σ_t exp(s(m,t)/τ) ), s(m,n) the cosine
    similarity of anchor m (one modality) and contrast n (the other); every contrast is in the denominator."""
    rows, cols = (image, text) if anchor == "image" else (text, image)
    logits = F.normalize(rows.float(), dim=1) @ F.normalize(cols.float(), dim=1).t() / temperature
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = labels[:, None] == labels[None, :]  # Inter-Mask 1^{mn}
    if not include_pair:
        positives = positives & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return _reduce(log_prob, positives.float(), normaliser)


def needs_inter_step(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, alpha: float,
                     similarity: str = "cosine", count_self_pairs: bool = False, floor: bool = False) -> bool:
    """Algorithm 1, lines 8-12: S = sim(I', T'); d = mean(diag S); c = #(S < d); run L_clm iff c < α·c_mask."""
    with torch.no_grad():
        if similarity == "cosine":
            sim = F.normalize(image.float(), dim=1) @ F.normalize(text.float(), dim=1).t()
        else:  # released code: sigmoid of raw (unnormalised) dot products, text rows
            sim = torch.sigmoid(text.float() @ image.float().t())
        d = torch.diagonal(sim).mean()
        count = int((sim < d).sum())
        same = labels[:, None] == labels[None, :]
        if not count_self_pairs:
            same = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        threshold = alpha * int(same.sum())
        return count < (int(threshold) if floor else threshold)


def total_loss(ce: torch.Tensor, lam: float, l_cli=None, l_clt=None, l_clm=None) -> torch.Tensor:
    """Eq (7): L = λ·L_ce + L_cli + L_clt + L_clm (absent terms are skipped)."""
    loss = lam * ce
    for term in (l_cli, l_clt, l_clm):
        if term is not None:
            loss = loss + term
    return loss


def sentiment_distances(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Figure 4's IID/TTD/ITD: mean Euclidean distance between same-label embeddings (ℓ2-normalised),
    within images (pairs i≠j), within texts (i≠j) and across modalities (every same-label (i, j), i = j included)."""
    image, text = F.normalize(image.float(), dim=1), F.normalize(text.float(), dim=1)
    same = labels[:, None] == labels[None, :]
    off = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)

    def mean_over(dist: torch.Tensor, mask: torch.Tensor) -> float:
        return float(dist[mask].mean()) if mask.any() else float("nan")

    return {"iid": mean_over(torch.cdist(image, image), off), "ttd": mean_over(torch.cdist(text, text), off),
            "itd": mean_over(torch.cdist(image, text), same)}
