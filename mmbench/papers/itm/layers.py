"""Transformer layers of ITM: one BERT-style layer used three ways.

- self-attention over image regions (the `Transformer(W_R^T R)` of §4.1) and over [H'_T ⊕ H_T]
  (the MM-Transformer of eq 7);
- cross-modal attention, the CM-Transformer of [Tsai et al., 2019] (eqs 1 and 5): queries from one
  modality, keys/values from the other.

The layer is post-LayerNorm like BERT (attention → dense → dropout → residual LN → GELU FFN →
residual LN), as ITM's released `modeling_utils.py` codes it. It returns the per-head attention
probabilities and the scaled pre-softmax logits, because the fine-grained alignment D (eq 5) is
read from them.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MultiHeadAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of {heads} heads")
        self.heads, self.head_dim = heads, hidden // heads
        self.query, self.key, self.value = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.head_dim).transpose(1, 2)  # [B, h, L, d/h]

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, key_mask: torch.Tensor | None):
        """query [B, Lq, d], key_value [B, Lk, d], key_mask [B, Lk] (1 = attend) or None.
        Returns context [B, Lq, d], probs [B, h, Lq, Lk], logits [B, h, Lq, Lk] (scaled, masked)."""
        q, k, v = self._split(self.query(query)), self._split(self.key(key_value)), self._split(self.value(key_value))
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        if key_mask is not None:
            logits = logits.masked_fill(key_mask[:, None, None, :] == 0, torch.finfo(logits.dtype).min)
        probs = logits.softmax(dim=-1)
        context = (self.dropout(probs) @ v).transpose(1, 2).reshape(query.shape[0], query.shape[1], -1)
        return context, probs, logits


class TransformerLayer(nn.Module):
    """BERT-style layer; `forward(x, x, mask)` is self-attention, `forward(x, y, mask_y)` cross-modal."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float, eps: float = 1e-5):
        super().__init__()
        self.attention = MultiHeadAttention(hidden, heads, dropout)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn_in, self.ffn_out = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, key_mask: torch.Tensor | None = None):
        context, probs, logits = self.attention(query, key_value, key_mask)
        hidden = self.attn_norm(query + self.dropout(self.attn_out(context)))
        hidden = self.ffn_norm(hidden + self.dropout(self.ffn_out(nn.functional.gelu(self.ffn_in(hidden)))))
        return hidden, probs, logits
