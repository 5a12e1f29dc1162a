"""The DTCA network (§2): dual encoders, text-only extraction head (eqs 6–7), vision-aware text
extraction by cross-attention (eqs 8–9) with a CRF output layer (eqs 10–12), token-patch alignment
(eqs 13–21, in alignment.py) and the joint loss (eq 22).

Switches for the released code (official-code.md §2d) sit in the config: per-head width 768 and no
FFN in the cross-attention, IPOT with an inverted padding mask, CRF loss summed / 10 on a
non-contiguous mask, argmax decoding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchcrf import CRF

from mmbench.papers.dtca.mabsa import NUM_TAGS
from mmbench.papers.dtca.alignment import ipot_loss, wasserstein_loss

IGNORE = -100


class CrossModalAttention(nn.Module):
    """Text as query, image tokens as key and value (eqs 8–9), then (paper) an MLP with two
    LayerNorms and two residuals, the first adding the text-only representation. The released code
    has 8 heads of 768 dims each (no bias), one residual + LayerNorm and no MLP."""

    def __init__(self, dim: int, heads: int, head_dim: int | None, bias: bool, ffn: bool, ffn_dim: int | None,
                 dropout: float, official_init: bool):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim or dim // heads
        inner = self.heads * self.head_dim
        self.query = nn.Linear(dim, inner, bias=bias)  # W^u_Q
        self.key = nn.Linear(dim, inner, bias=bias)  # W^u_K
        self.value = nn.Linear(dim, inner, bias=bias)  # W^u_V
        self.out = nn.Linear(inner, dim, bias=bias)  # W^p, eq (9)
        self.attn_dropout, self.dropout = nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim or 4 * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim or 4 * dim, dim)) if ffn else None
        self.norm2 = nn.LayerNorm(dim) if ffn else None
        if official_init:  # released code: N(0, sqrt(2/(d+d_k))) for W_q/k/v, xavier-normal for fc
            for layer in (self.query, self.key, self.value):
                nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / (dim + self.head_dim)))
            nn.init.xavier_normal_(self.out.weight)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(text)), self._split(self.key(image)), self._split(self.value(image))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), dim=-1)  # eq (8)
        heads = self.attn_dropout(weights) @ v  # Att_u for u = 1..U
        attended = self.out(heads.transpose(1, 2).reshape(text.shape[0], text.shape[1], -1))  # eq (9): W^p [Att_1..Att_U]
        hidden = self.norm1(text + self.dropout(attended))  # first residual adds the text-only states
        if self.ffn is None:
            return hidden
        return self.norm2(hidden + self.dropout(self.ffn(hidden)))  # p̂ = MLP + second LayerNorm / residual


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half precision to fp32; fp32/fp64 stay as they are (float64 golden runs)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def crf_nll(crf: CRF, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    """eq (12): −log P(y|x) of eqs (10)–(11), in at least fp32 (autocast off). `mean` averages over
    the batch (1/J Σ_j); `sum_div10` is the released code's sum over the batch divided by 10."""
    with torch.autocast(emissions.device.type, enabled=False):
        log_likelihood = crf(at_least_fp32(emissions), tags, mask=mask, reduction="sum" if reduction == "sum_div10" else "mean")
    return -log_likelihood / 10 if reduction == "sum_div10" else -log_likelihood


def crf_decode(crf: CRF, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Viterbi: argmax_y score(x, y) of eq (11), in at least fp32."""
    with torch.autocast(emissions.device.type, enabled=False):
        return crf.decode(at_least_fp32(emissions), mask=mask)


def gather_words(states: torch.Tensor, word_index: torch.Tensor) -> torch.Tensor:
    """[B, L, K] at each word's first sub-token -> [B, W, K], words packed to the left."""
    return states.gather(1, word_index.unsqueeze(-1).expand(-1, -1, states.shape[-1]))


class DTCAModel(nn.Module):
    def __init__(self, config, text_encoder: nn.Module, image_encoder: nn.Module | None, image_dim: int, prefix_tokens: int):
        super().__init__()
        self.config = config
        self.text_encoder, self.image_encoder = text_encoder, image_encoder
        self.prefix_tokens = prefix_tokens
        dim = text_encoder.config.hidden_size
        self.text_dropout = nn.Dropout(config.dropout)
        self.text_head = nn.Linear(dim, NUM_TAGS)  # eq (6): W^t, b^t
        if config.tagger == "text_softmax":
            self.cross = self.emission = self.crf = None
            return
        # a width mismatch (Swin-base 1024 vs RoBERTa 768) needs a projection; identity for ViT/DeiT
        self.image_projection = nn.Linear(image_dim, dim) if image_encoder is not None and image_dim != dim else nn.Identity()
        self.cross = None if config.tagger == "text_crf" else CrossModalAttention(
            dim, config.num_heads, config.head_dim, config.attention_bias, config.cross_ffn, config.ffn_dim,
            config.dropout, config.official_init)
        self.emission = nn.Linear(dim, NUM_TAGS)  # w_{y_n} of eq (11)
        self.crf = CRF(NUM_TAGS, batch_first=True)  # transition matrix A of eq (11)

    # -- forward --------------------------------------------------------------------------------
    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        # eqs (2)–(5): RoBERTa embeddings + Transformer blocks (inside the HF model)
        text = self.text_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        out = {"text": text, "text_logits": self.text_head(self.text_dropout(text))}  # eq (6) (softmax in the loss)
        if self.cross is None and self.emission is None:
            return out
        if self.cross is None:  # text-only CRF tagger: the CRF reads the text states directly
            out["cross_logits"] = self.emission(text)
            return out
        # eqs (1), (3)–(5): ViT patch embeddings + Transformer blocks (inside the HF model)
        image = self.image_encoder(pixel_values=batch["pixel_values"]).last_hidden_state
        if self.config.image_tokens == "patches":  # z_V = [v̂_1..v̂_M]: drop [CLS] (and DeiT's distillation token)
            image = image[:, self.prefix_tokens :]
        image = self.image_projection(image)
        out["image"] = image
        out["cross_logits"] = self.emission(self.cross(text, image))  # p̂ -> emission scores of eq (11)
        return out

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Loss terms and eq (22): L = L_CM + α·L_TO + β·L_WD."""
        config = self.config
        out = self.encode(batch)
        # eq (7): mean cross-entropy over labelled (first) sub-tokens
        text_loss = F.cross_entropy(at_least_fp32(out["text_logits"]).flatten(0, 1), batch["token_labels"].flatten(), ignore_index=IGNORE)
        if config.tagger == "text_softmax":
            return {"loss": text_loss, "text_loss": text_loss}
        crf_loss = self.crf_loss(out["cross_logits"], batch)
        terms = {"crf_loss": crf_loss, "text_loss": text_loss}
        loss = crf_loss + config.alpha * text_loss
        if "image" in out and config.beta != 0:
            ot_loss = self.alignment_loss(out["text"], out["image"], batch)
            terms["ot_loss"] = ot_loss
            loss = loss + config.beta * ot_loss
        return {"loss": loss, **terms}

    def crf_loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        if self.config.crf_mask == "packed":  # words packed left, contiguous mask (pytorch-crf's contract)
            return crf_nll(self.crf, gather_words(logits, batch["word_index"]), batch["word_tags"], batch["word_mask"],
                           self.config.crf_reduction)
        # released code: raw positions, mask = first sub-tokens plus position 0, tags 0 elsewhere
        mask = batch["token_labels"] != IGNORE
        mask[:, 0] = True
        return crf_nll(self.crf, logits, batch["token_labels"].clamp_min(0), mask, self.config.crf_reduction)

    def alignment_loss(self, text: torch.Tensor, image: torch.Tensor, batch: dict) -> torch.Tensor:
        """L_WD, eqs (13)–(21), in at least fp32."""
        config = self.config
        with torch.autocast(text.device.type, enabled=False):
            text, image = at_least_fp32(text), at_least_fp32(image)
            if config.ot_solver == "ipot":
                return ipot_loss(text, image, batch["ot_text_mask"], config.ipot_proximal_beta, config.ipot_iterations, config.ipot_k)
            return wasserstein_loss(text, image, batch["ot_text_mask"], cost=config.ot_cost)

    # -- inference -------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, batch: dict) -> dict[str, list[list[int]]]:
        """Word tags per sentence from the main output (CRF/argmax) and from the text-only head."""
        out = self.encode(batch)
        lengths = batch["word_mask"].sum(1).tolist()
        text_tags = gather_words(out["text_logits"], batch["word_index"]).argmax(-1).tolist()
        text_tags = [tags[:n] for tags, n in zip(text_tags, lengths)]
        if "cross_logits" not in out:
            return {"tags": text_tags, "text_tags": text_tags}
        emissions = gather_words(out["cross_logits"], batch["word_index"])
        if self.config.decode == "viterbi":
            tags = crf_decode(self.crf, emissions, batch["word_mask"])
        else:  # released code: argmax of the emission scores, the CRF unused at inference
            tags = [row[:n] for row, n in zip(emissions.argmax(-1).tolist(), lengths)]
        return {"tags": tags, "text_tags": text_tags}
