"""DCPA's network (Shi et al., IEEE TIP 2022, §III): feature extraction (FEM), Intra-PAM, Inter-PAM,
the similarities S(i^V, c^T), S(i^T, c), S(i, c^V) and the hardest-negative triplet loss (eq 15).

Shapes: regions [B, m, region_dim] (m = 36), words [B, n, word_dim] with a bool mask [B, n]: frozen
BERT features (word_dim = BERT's hidden size, 768), or token ids [B, n] when the model owns a trainable
text backbone (the Bi-GRU of Table I's `[GRU]` rows: word_dim = its hidden size), which turns them into
word features before anything downstream (textual phrase CNN, Inter-PAM) reads them. Everything that scores pairs returns [B_images, B_captions].
Each side is encoded once (`encode_images` / `encode_captions`); `pair_scores` does the per-pair work,
so training (all B×B pairs of a batch) and blocked evaluation share one code path.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from mmbench.papers.dcpa.attention import EncoderLayer, PairDecoderLayer


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    return x / x.norm(dim=dim, keepdim=True).clamp(min=eps)


@contextmanager
def fp32_similarity(device: torch.device):
    """Similarities that are compared (cosines, eq 13's max, the top-K of eqs 10/14, the W1/W2 weighting)
    are computed and stored in float32 even inside a bf16 autocast: bf16 keeps 8 significand bits, so a
    row of 1,000 captions' scores collapses to ~100 distinct values and top-K and ranks are decided by
    ties. Inputs are up-cast with `at_least_fp32` (float64 stays float64)."""
    with torch.autocast(device.type, enabled=False):
        yield


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 → float32; float32 and float64 unchanged (a float64 model is never rounded to float32)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def topk_mean(sims: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eqs (10)/(14): (1/K) Σ topK over the last dim. With a mask, padding never counts and an item
    with fewer than K valid elements averages all of them (a caption shorter than K words)."""
    if mask is not None:
        sims = sims.masked_fill(~mask, float("-inf"))
    top = sims.topk(min(k, sims.shape[-1]), dim=-1).values
    if mask is None:
        return top.mean(-1)
    valid = torch.isfinite(top)
    return top.masked_fill(~valid, 0.0).sum(-1) / valid.sum(-1).clamp(min=1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None, dim: int) -> torch.Tensor:
    if mask is None:
        return x.mean(dim)
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim) / weights.sum(dim).clamp(min=1)


class TextPhraseCNN(nn.Module):
    """Intra-PAM's textual phrase construction (eqs 7-9), after SAEM/Kim: uni/bi/tri-gram convolutions,
    max-pooling over positions, FC + LayerNorm, then ℓ2 (the text's "L2 normalization")."""

    def __init__(self, word_dim: int, filters: int, windows: tuple[int, ...], dim: int):
        super().__init__()
        self.windows = windows
        self.convs = nn.ModuleList(nn.Conv1d(word_dim, filters, l) for l in windows)
        self.fc = nn.Linear(filters * len(windows), dim)  # W_e, b_e
        self.norm = nn.LayerNorm(dim)

    def forward(self, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = words.transpose(1, 2)  # [B, word_dim, n]
        pooled = []
        lengths = mask.sum(1)
        for l, conv in zip(self.windows, self.convs):
            if x.shape[-1] < l:  # a batch shorter than the window: pad (zero features) so the conv runs
                x = nn.functional.pad(x, (0, l - x.shape[-1]))
            p = torch.relu(conv(x))  # eq (7): p_{l,k} = ReLU(W_l w_{k:k+l-1} + b_l)
            # windows that start past the caption's last word - l + 1 overlap padding: never pooled.
            # (values are ≥ 0 after ReLU, so zeroing them equals excluding them from the max)
            # a caption shorter than l keeps its first window, whose missing words are zero features
            # (both loaders pad with zeros, so its value never depends on the batch it is in)
            starts = torch.arange(p.shape[-1], device=p.device)
            valid = starts[None, :] <= (lengths[:, None] - l).clamp(min=0)
            pooled.append(p.masked_fill(~valid[:, None, :], 0.0).amax(-1))  # eq (8): q_l = max_k p_{l,k}
        return l2norm(self.norm(self.fc(torch.cat(pooled, -1))))  # eq (9): c^T = LN(W_e [q1;q2;q3] + b_e)


@dataclass
class DCPADims:
    region_dim: int = 2048
    word_dim: int = 768  # of the word features every module reads: BERT hidden (768) or the Bi-GRU hidden size
    dim: int = 256
    heads: int = 16
    ffn_dim: int = 1024
    dropout: float = 0.1
    filters: int = 512
    windows: tuple[int, ...] = (1, 2, 3)


class IntraPAM(nn.Module):
    """Stage 1 (§III-B). `region_fc` is the FEM's 2048→256 layer; Inter-PAM reads its output too.
    `word_encoder` is the FEM's trainable text side when there is one (Bi-GRU); None for frozen BERT,
    whose features arrive precomputed. Both belong to stage 1 and freeze with Intra-PAM in stage 2."""

    def __init__(self, d: DCPADims, word_encoder: nn.Module | None = None):
        super().__init__()
        self.region_fc = nn.Linear(d.region_dim, d.dim)  # FEM: o_k → r_k
        self.word_encoder = word_encoder  # FEM: caption → c = {w_1..w_n}
        self.visual = EncoderLayer(d.dim, d.heads, d.ffn_dim, d.dropout)  # eqs (1)-(6)
        self.textual = TextPhraseCNN(d.word_dim, d.filters, d.windows, d.dim)  # eqs (7)-(9)

    def similarity(self, visual_phrases: torch.Tensor, sentence: torch.Tensor, k: int, how: str) -> torch.Tensor:
        """visual_phrases [Bi, m, d] (un-normalised r_k^V), sentence [Bc, d] (c^T) → [Bi, Bc] (float32)."""
        with fp32_similarity(sentence.device):
            visual_phrases, sentence = at_least_fp32(visual_phrases), at_least_fp32(sentence)
            if how == "global_ave":  # SAEM (Table III "global-ave"): pool the phrases, then one cosine
                return l2norm(visual_phrases.mean(1)) @ sentence.t()
            local = torch.einsum("imd,cd->icm", l2norm(visual_phrases), sentence)  # r_k^V · c^T
            return topk_mean(local, k)  # eq (10)


class InterPAM(nn.Module):
    """Stage 2 (§III-C): decoupled I2T and T2I decoder branches."""

    def __init__(self, d: DCPADims):
        super().__init__()
        self.word_fc = nn.Linear(d.word_dim, d.dim)  # "a fully-connect layer ... each token to 256-d"
        self.i2t = PairDecoderLayer(d.dim, d.heads, d.ffn_dim, d.dropout)
        self.t2i = PairDecoderLayer(d.dim, d.heads, d.ffn_dim, d.dropout)

    def i2t_scores(self, regions, region_phrases, words, word_mask, k, how):
        """S(i^T, c): regions [Bi, m, d], i^P [Bi, m, d], c [Bc, n, d] → [Bi, Bc]."""
        mapped = self.i2t.cross_part(region_phrases[:, None], words[None], word_mask[None])  # eqs (11)-(12): i^T [Bi, Bc, m, d]
        with fp32_similarity(words.device):
            mapped, words = at_least_fp32(mapped), at_least_fp32(words)
            if how == "global_ave":  # Table IV "w/o local-agg": average first, then one cosine
                return (l2norm(mapped.mean(2)) * l2norm(masked_mean(words, word_mask, 1))[None]).sum(-1)
            a = torch.einsum("icmd,cnd->icmn", l2norm(mapped), l2norm(words))  # eq (13): A(k, l) = vp_k^T · w_l
            a = a.masked_fill(~word_mask[None, :, None, :], float("-inf"))
            return topk_mean(a.amax(-1), k)  # eq (14): (1/K) Σ topK_k [max_l A(k, l)]

    def t2i_scores(self, regions, words, word_phrases, word_mask, k, how):
        """S(i, c^V): the symmetric branch; words attend to regions → c^V [Bi, Bc, n, d]."""
        mapped = self.t2i.cross_part(word_phrases[None], regions[:, None])  # eq (11) with roles swapped
        with fp32_similarity(regions.device):
            mapped, regions = at_least_fp32(mapped), at_least_fp32(regions)
            if how == "global_ave":
                return (l2norm(masked_mean(mapped, word_mask[None], 2)) * l2norm(regions.mean(1))[:, None]).sum(-1)
            a = torch.einsum("icnd,imd->icnm", l2norm(mapped), l2norm(regions))  # eq (13) mirrored: wp_l^V · r_k
            return topk_mean(a.amax(-1), k, mask=word_mask[None].expand(a.shape[:3]))  # eq (14) mirrored over words


class DCPAModel(nn.Module):
    def __init__(self, dims: DCPADims, top_k: int = 10, intra_similarity: str = "local_agg",
                 inter_similarity: str = "local_agg", decoupled: bool = True, weights: tuple[float, float] = (0.6, 0.4),
                 word_encoder: nn.Module | None = None):
        super().__init__()
        self.dims, self.top_k = dims, top_k
        self.intra_similarity, self.inter_similarity = intra_similarity, inter_similarity
        self.decoupled, self.weights = decoupled, weights
        self.intra = IntraPAM(dims, word_encoder)
        self.inter = InterPAM(dims)
        # which stage this weight set belongs to: saved in checkpoints, so an evaluated checkpoint
        # scores with Intra-PAM alone (stage 1) or with both modules (stage 2)
        self.register_buffer("stage", torch.tensor(1, dtype=torch.long))

    def encode_images(self, regions: torch.Tensor) -> dict[str, torch.Tensor]:
        r = self.intra.region_fc(regions)  # FEM: i = {r_1..r_m}
        out = {"regions": r}
        if int(self.stage) == 1 or not self.training:
            out["visual_phrases"] = self.intra.visual(r)  # eq (6): i^V (ℓ2-normalised in the similarity)
        if int(self.stage) == 2:
            out["region_phrases"] = self.inter.i2t.self_part(r)  # i^P
        return out

    def encode_captions(self, words: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """words: BERT features [B, n, word_dim], or token ids [B, n] for the model's own text backbone."""
        if self.intra.word_encoder is not None:
            words = self.intra.word_encoder(words, mask)  # Bi-GRU: ids → [B, n, word_dim]
        out = {"mask": mask}
        if int(self.stage) == 1 or not self.training:
            out["sentence"] = self.intra.textual(words, mask)  # eq (9): c^T
        if int(self.stage) == 2:
            w = self.inter.word_fc(words)
            out["words"] = w
            out["word_phrases"] = self.inter.t2i.self_part(w, mask)
        return out

    def intra_scores(self, img: dict, cap: dict) -> torch.Tensor:
        return self.intra.similarity(img["visual_phrases"], cap["sentence"], self.top_k, self.intra_similarity)  # S(i^V, c^T)

    def inter_scores(self, img: dict, cap: dict) -> tuple[torch.Tensor, torch.Tensor]:
        how = self.inter_similarity
        s_i2t = self.inter.i2t_scores(img["regions"], img["region_phrases"], cap["words"], cap["mask"], self.top_k, how)  # S(i^T, c)
        s_t2i = self.inter.t2i_scores(img["regions"], cap["words"], cap["word_phrases"], cap["mask"], self.top_k, how)  # S(i, c^V)
        if not self.decoupled:  # Table IV "w/o decoupled": one symmetric similarity for both tasks
            s_i2t = s_t2i = (s_i2t + s_t2i) / 2
        return s_i2t, s_t2i

    def pair_scores(self, img: dict, cap: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference scores (§III-D) of the stage this weight set belongs to (`stage_pair_scores`)."""
        return self.stage_pair_scores(int(self.stage))(img, cap)

    def stage_pair_scores(self, stage: int):
        """The scoring function of `stage`, with the stage a Python constant: no tensor is read to pick
        the branch, so torch.compile traces it as one graph (reading the `stage` buffer breaks it)."""
        return self._intra_pair_scores if stage == 1 else self._full_pair_scores

    def _intra_pair_scores(self, img: dict, cap: dict) -> tuple[torch.Tensor, torch.Tensor]:
        intra = self.intra_scores(img, cap)  # stage 1: S(i^V, c^T) for both directions
        return intra, intra

    def _full_pair_scores(self, img: dict, cap: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """I2T = W1·S(i^V,c^T) + W2·S(i^T,c), T2I = W1·S(i^V,c^T) + W2·S(i,c^V): float32 (fp32_similarity)."""
        intra = self.intra_scores(img, cap)
        s_i2t, s_t2i = self.inter_scores(img, cap)
        w1, w2 = self.weights
        return w1 * intra + w2 * s_i2t, w1 * intra + w2 * s_t2i


def hardest_negative_triplet(s_i2t: torch.Tensor, s_t2i: torch.Tensor, margin: float, max_violation: bool = True,
                             reduction: str = "sum") -> torch.Tensor:
    """Eq (15) on a batch whose pair b is (image b, caption b). Line 1 (negative captions T̂ of image I)
    uses s_i2t, line 2 (negative images Î of caption T) uses s_t2i — the decoupled loss; pass the same
    matrix twice for stage 1. Hardest negatives as VSE++/SCAN (max_violation); SCAN sums over the batch."""
    diag = torch.eye(s_i2t.shape[0], dtype=torch.bool, device=s_i2t.device)
    cost_caption = (margin - s_i2t.diagonal()[:, None] + s_i2t).clamp(min=0).masked_fill(diag, 0)  # max[0, M - S(I,T) + S(I,T̂)]
    cost_image = (margin - s_t2i.diagonal()[None, :] + s_t2i).clamp(min=0).masked_fill(diag, 0)  # max[0, M - S(I,T) + S(Î,T)]
    if max_violation:
        cost_caption, cost_image = cost_caption.amax(1), cost_image.amax(0)
    total = cost_caption.sum() + cost_image.sum()
    return total if reduction == "sum" else total / s_i2t.shape[0]
