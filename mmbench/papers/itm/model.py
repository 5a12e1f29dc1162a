"""The ITM network (Yu et al., IJCAI-22 §4), block by block, and its three losses.

  H_T   = RoBERTa(T')                                           §4.1 contextualised target input
  H_V   = Transformer(W_R^T R)                                  §4.1 100 regions → d
  H'_V  = CM-Transformer(H_V, H_T, H_T)                         eq 1 (coarse-grained matching)
  P(r)  = Sigmoid(W_r maxpool(H'_V) + b_r)                      eq 2 (official: 2-way softmax head)
  H''_V = G ⊙ H'_V, every entry of G = P(r)                     eq 4
  H'_T  = CM-Transformer(H^0_T, H''_V, H''_V), D = mean_h D_h   eq 5 (fine-grained matching)
  H     = MM-Transformer([H'_T ⊕ H_T])                          eq 7
  P(y)  = Softmax(W^T H_0 + b)                                  eq 8
Losses: L_RE (eq 3), L_ATT (eq 6), L_TMSC (eq 9); the method combines them as eq 10.

Switches for the ablations of Table 6 (`coarse_matching`, `fine_matching`) and for the released
code's differences (`relevance_head`, `alignment_distribution`, `fine_query`, `classifier_head`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mmbench.papers.itm.layers import TransformerLayer


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Upcast bf16/fp16 (autocast) to fp32 for softmax/sigmoid/losses; fp32/fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class ITMNetwork(nn.Module):
    def __init__(self, text_encoder: nn.Module, cfg):
        super().__init__()
        self.cfg = cfg
        self.text_encoder = text_encoder
        d = text_encoder.config.hidden_size
        layer = lambda: TransformerLayer(d, cfg.num_heads, cfg.ffn_dim, cfg.dropout)  # noqa: E731
        self.region_proj = nn.Linear(cfg.region_dim, d)  # W_R
        self.image_layers = nn.ModuleList(layer() for _ in range(cfg.image_layers))
        if cfg.coarse_matching:
            self.coarse = layer()  # eq 1
            if cfg.relevance_head == "sigmoid":
                self.relevance = nn.Linear(d, 1)  # eq 2: W_r, b_r
            else:  # released code: Linear(d→1) per region, then Linear(100→2), dropout 0.3 before each
                self.relevance_region = nn.Linear(d, 1)
                self.relevance_pair = nn.Linear(cfg.num_regions, 2)
                self.relevance_dropout = nn.Dropout(cfg.relevance_dropout)
        if cfg.fine_matching:
            self.fine = layer()  # eq 5
            if cfg.fine_query == "pooler":  # released code: RoBERTa's pooler (dense + tanh on <s>)
                self.query_pooler = nn.Linear(d, d)
        self.fusion = layer()  # eq 7
        if cfg.classifier_head == "pooler":  # released code: BertPooler (dense + tanh) on the first token
            self.head_pooler = nn.Linear(d, d)
        self.head_dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(d, cfg.num_labels)  # eq 8: W, b
        for name, module in self.named_modules():
            if not name.startswith("text_encoder"):
                self._init(module)

    def _init(self, module: nn.Module) -> None:
        # N(0, 0.02) for every added Linear, LayerNorm (1, 0): the released code's initialisation
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=self.cfg.init_std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # -- blocks ---------------------------------------------------------------------------------
    def encode_image(self, regions: torch.Tensor) -> torch.Tensor:
        hidden = self.region_proj(regions)  # W_R^T R
        for layer in self.image_layers:
            hidden, _, _ = layer(hidden, hidden)  # no image mask: always 100 proposals
        return hidden  # H_V [B, 100, d]

    def relevance_logits(self, image_given_text: torch.Tensor) -> torch.Tensor:
        if self.cfg.relevance_head == "sigmoid":
            pooled = image_given_text.max(dim=1).values  # h'_V = max-pooling(H'_V)
            return self.relevance(pooled).squeeze(-1)  # eq 2 before the sigmoid: [B]
        per_region = self.relevance_region(self.relevance_dropout(image_given_text)).squeeze(-1)  # [B, 100]
        return self.relevance_pair(self.relevance_dropout(per_region))  # [B, 2]

    def relevance_probability(self, logits: torch.Tensor) -> torch.Tensor:
        if self.cfg.relevance_head == "sigmoid":
            return torch.sigmoid(_at_least_fp32(logits))  # eq 2
        return _at_least_fp32(logits).softmax(-1)[:, 1]  # released code: softmax(rel)[:, 1]

    def alignment_distribution(self, probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """D over the proposals from the fine CM-Transformer's single query, [B, 100]."""
        if self.cfg.alignment_distribution == "mean_probs":
            return _at_least_fp32(probs).mean(dim=1)[:, 0]  # D = 1/m Σ_i D_i (§4.3)
        return _at_least_fp32(logits).mean(dim=1)[:, 0].softmax(-1)  # released code: softmax of head-averaged logits

    def forward(self, input_ids, attention_mask, regions) -> dict[str, torch.Tensor]:
        text = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # H_T
        image = self.encode_image(regions)  # H_V
        out: dict[str, torch.Tensor] = {}
        if self.cfg.coarse_matching:
            image_given_text, _, _ = self.coarse(image, text, attention_mask)  # eq 1: H'_V
            out["relevance_logits"] = self.relevance_logits(image_given_text)
            gate = self.relevance_probability(out["relevance_logits"])  # P(r)
            out["relevance_prob"] = gate
            image = gate[:, None, None].to(image_given_text.dtype) * image_given_text  # eq 4: H''_V = G ⊙ H'_V
        ones = torch.ones(image.shape[:2], dtype=attention_mask.dtype, device=image.device)
        if self.cfg.fine_matching:
            query = text[:, :1]  # H^0_T, the first token of the target input
            if self.cfg.fine_query == "pooler":
                query = torch.tanh(self.query_pooler(query))
            target_given_image, probs, logits = self.fine(query, image, ones)  # eq 5: H'_T
            out["alignment"] = self.alignment_distribution(probs, logits)  # D
            fused_in, fused_mask = torch.cat([target_given_image, text], 1), torch.cat([ones[:, :1], attention_mask], 1)
            first_token = 0  # H'_T: the fine CM-Transformer's output for the query H^0_T (<s>)
        else:  # ablation: the (filtered) regions themselves join the text
            fused_in, fused_mask = torch.cat([image, text], 1), torch.cat([ones, attention_mask], 1)
            first_token = image.shape[1]  # the text's <s>; position 0 would be image region 0
        fused, _, _ = self.fusion(fused_in, fused_in, fused_mask)  # eq 7: H = MM-Transformer(H_M, H_M, H_M)
        first = fused[:, first_token]  # H_0: the target input's first token, in every variant (eq 8)
        if self.cfg.classifier_head == "pooler":
            first = torch.tanh(self.head_pooler(first))
        out["logits"] = self.classifier(self.head_dropout(first))  # eq 8 (softmax taken in the loss)
        return out


# -- losses (fp32) ----------------------------------------------------------------------------------
def relevance_loss(logits: torch.Tensor, relation: torch.Tensor, head: str) -> torch.Tensor:
    """eq 3: L_RE = -1/M Σ_k log P(r_k) over the examples with a relevance label (relation ≥ 0)."""
    labelled = relation >= 0
    if not labelled.any():
        return logits.sum() * 0.0
    logits = _at_least_fp32(logits)
    if head == "sigmoid":
        return F.binary_cross_entropy_with_logits(logits[labelled], relation[labelled].to(logits.dtype))
    return F.cross_entropy(logits[labelled], relation[labelled])  # released code: 2-way CE


def alignment_loss(dist: torch.Tensor, target: torch.Tensor, relation: torch.Tensor, normaliser: str) -> torch.Tensor:
    """eq 6: L_ATT = 1/C Σ_i Σ_j A_ij log(A_ij / D_ij), C = related examples in the batch (paper);
    `normaliser="batch"`: divide by the whole batch, as KLDivLoss(reduction='batchmean') does in
    the released code. Examples with an all-zero A add 0 (0·log 0 = 0)."""
    dist = _at_least_fp32(dist)
    target = target.to(dist.dtype)
    terms = torch.xlogy(target, target) - target * torch.log(dist.clamp_min(1e-12))
    total = terms.sum()
    count = (relation == 1).sum() if normaliser == "related" else torch.tensor(target.shape[0], device=target.device)
    return total / count.clamp_min(1)


def sentiment_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """eq 9: L_TMSC = -1/N Σ_j log P(y_j)."""
    return F.cross_entropy(_at_least_fp32(logits), labels)
