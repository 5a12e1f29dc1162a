"""SPP-SCL's objectives: intra-modal supervised contrastive losses (eqs 4-5), the inter-modal one
(eq 6), the two-step condition of Algorithm 1 and the IID/TTD/ITD distances of Figure 4.

Paper and released code differ in small ways; each is a switch (paper-variant default first):
- `normaliser`: "positives" = each anchor's positive log-likelihoods averaged over its |P(i)|
  positives, as in Khosla et al. (whom §Intra-Modal cites) and the released loss.py; "batch" = eq
  (4)'s literal 1/B, which weights anchors by class frequency and weakens the contrastive terms against
  the λ tuned with 1/|P(i)|. An anchor without positives adds 0 either way.
- `self_in_denominator`: eq (4) sums k over the other B-1 samples ("the diagonal is excluded");
  the released code zeroes the diagonal logit, so exp(0) stays in the denominator.
- inter-modal `pair` (what the matched pair (m, m) is in eq 6): "positive" (released code; SupCon's
  other view of the anchor), "excluded" (neither positive nor in the denominator) or "negative"
  (eq 6 as printed: 1^{mn} drops m = n but Σ_t keeps it, which pushes matched pairs apart although
  the text says L_clm pulls them together); `anchor`: which modality gives the rows.
- condition `similarity`: Algorithm 1 never defines "sim"; "sigmoid_dot" = the released sigmoid of the
  raw dot products (paper-variant default, see the recipe's assumptions: with cosine the step almost
  never runs), "cosine" the switch; the mask count with or without the diagonal; α·count vs int(α·count).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 (bf16/fp16 activations under autocast); fp32/fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _reduce(log_prob: torch.Tensor, positives: torch.Tensor, normaliser: str) -> torch.Tensor:
    """-(1/B) Σ_i w_i Σ_j 1^{ij} log_prob_ij with w_i = 1/|P(i)| (Khosla et al., released code) or 1/B (eq 4 as printed)."""
    per_anchor = (positives * log_prob).sum(1)
    if normaliser == "batch":
        per_anchor = per_anchor / positives.shape[1]
    else:
        per_anchor = per_anchor / positives.sum(1).clamp(min=1)
    return -per_anchor.mean()


def intra_supcon(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07,
                 normaliser: str = "positives", self_in_denominator: bool = False) -> torch.Tensor:
    """Eqs (4)/(5): L_cl = -1/B Σ_i w_i Σ_j 1[y_i=y_j, i≠j] log( exp(s(i,j)/τ) / Σ_{k≠i} exp(s(i,k)/τ) )."""
    z = F.normalize(at_least_fp32(features), dim=1)
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = z @ z.t() / temperature  # cosine similarity s(i, j) / τ
    if self_in_denominator:
        logits = logits.masked_fill(eye, 0.0)  # released code: diagonal logit set to 0, kept in the sum
        denominator = torch.logsumexp(logits, dim=1, keepdim=True)
    else:
        denominator = torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - denominator
    positives = ((labels[:, None] == labels[None, :]) & ~eye).to(z.dtype)  # Intra-Mask 1^{ij}
    return _reduce(log_prob.masked_fill(eye, 0.0), positives, normaliser)


def inter_supcon_logits(logits: torch.Tensor, labels: torch.Tensor, normaliser: str = "positives",
                        pair: str = "positive") -> torch.Tensor:
    """Eq (6) from the scaled similarities s(m, n)/τ [B, B] (rows = anchors, diagonal = matched pairs)."""
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positives = labels[:, None] == labels[None, :]  # Inter-Mask 1^{mn}
    if pair != "positive":
        positives = positives & ~eye  # eq (6) as printed: m ≠ n
    if pair == "excluded":  # the matched pair leaves the denominator too: neither pulled nor pushed
        log_prob = logits - torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
        log_prob = log_prob.masked_fill(eye, 0.0)
    else:
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # Σ_t over every contrast
    return _reduce(log_prob, positives.to(logits.dtype), normaliser)


def inter_supcon(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07,
                 normaliser: str = "positives", pair: str = "positive", anchor: str = "image") -> torch.Tensor:
    """Eq (6): L_clm = -1/B Σ_m w_m Σ_n 1^{mn} log( exp(s(m,n)/τ) / Σ_t exp(s(m,t)/τ) ), s(m,n) the cosine
    similarity of anchor m (one modality) and contrast n (the other)."""
    rows, cols = (image, text) if anchor == "image" else (text, image)
    logits = F.normalize(at_least_fp32(rows), dim=1) @ F.normalize(at_least_fp32(cols), dim=1).t() / temperature
    return inter_supcon_logits(logits, labels, normaliser, pair)


def alignment_check(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, alpha: float,
                    similarity: str = "sigmoid_dot", count_self_pairs: bool = False, floor: bool = False) -> dict:
    """Algorithm 1, lines 8-12: S = sim(I', T'); d = mean(diag S); c = #(S < d); run L_clm iff c < α·c_mask.
    Returns {"run": bool, "count": c, "threshold": α·c_mask (floored when `floor`)}."""
    with torch.no_grad():
        image, text = at_least_fp32(image), at_least_fp32(text)
        if similarity == "cosine":
            sim = F.normalize(image, dim=1) @ F.normalize(text, dim=1).t()
        else:  # released code: sigmoid of raw (unnormalised) dot products, text rows (c is transpose-invariant)
            sim = torch.sigmoid(text @ image.t())
        d = torch.diagonal(sim).mean()
        count = int((sim < d).sum())
        same = labels[:, None] == labels[None, :]
        if not count_self_pairs:
            same = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        threshold = alpha * int(same.sum())
        threshold = int(threshold) if floor else threshold
        return {"run": count < threshold, "count": count, "threshold": float(threshold)}


def needs_inter_step(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, alpha: float,
                     similarity: str = "sigmoid_dot", count_self_pairs: bool = False, floor: bool = False) -> bool:
    """Algorithm 1's condition (line 12) as a bool; see `alignment_check`."""
    return alignment_check(image, text, labels, alpha, similarity, count_self_pairs, floor)["run"]


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
    image, text = F.normalize(at_least_fp32(image), dim=1), F.normalize(at_least_fp32(text), dim=1)
    same = labels[:, None] == labels[None, :]
    off = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)

    def mean_over(dist: torch.Tensor, mask: torch.Tensor) -> float:
        return float(dist[mask].mean()) if mask.any() else float("nan")

    return {"iid": mean_over(torch.cdist(image, image), off), "ttd": mean_over(torch.cdist(text, text), off),
            "itd": mean_over(torch.cdist(image, text), same)}
