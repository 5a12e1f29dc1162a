"""Transformer blocks of DCPA (paper §III-B/C), written out so each equation has a line, and able to
score *pairs*: leading dims broadcast, so queries of Bi images [Bi, 1, Lq, d] attend to keys of Bc
captions [1, Bc, Lk, d] giving [Bi, Bc, Lq, d] without copying either side Bi·Bc times.

Two kernels compute the pair case, with the same numbers (tested): `broadcast`, eqs (2)-(3) line by
line, lets matmul expand q/k/v to every pair (copying the queries once per key item) and runs
B_i·B_c·h tiny products; `batched` (default) scores every query of a block against every key of the
block in one [B_i·L_q, d_k] × [d_k, B_c·L_k] product per head, so neither q nor k is repeated per pair,
then applies each pair's softmax weights to its own values in one batched product (the weights, which
exist per pair anyway, are the only per-pair tensor laid out again, plus the head concatenation of eq 4).

Post-LN as in the paper ("a residual connection followed by a layer normalization is applied for each
sublayer"), ReLU FFN (eq 5). Equal to torch.nn.TransformerEncoderLayer / TransformerDecoderLayer
(norm_first=False, relu) with the same weights — tested.
"""

from __future__ import annotations

import math

import torch
from torch import nn


PAIR_KERNELS = ("batched", "broadcast")


def _pair_sides(q: torch.Tensor, k: torch.Tensor) -> bool | None:
    """True for queries [A, 1, h, Lq, d_k] against keys [1, B, h, Lk, d_k] (output [A, B, ...]), False
    for queries [1, B, ...] against keys [A, 1, ...], None when the call is not a pair broadcast."""
    if q.dim() != 5 or k.dim() != 5:
        return None
    if q.shape[1] == 1 and k.shape[0] == 1:
        return True
    if q.shape[0] == 1 and k.shape[1] == 1:
        return False
    return None


class MultiHeadAttention(nn.Module):
    """Eqs (1)-(4). `project_query` / `project_key_value` can be run once per item and reused for
    every pair; `attend` broadcasts over the leading dims."""

    pair_kernel = "batched"  # set per model by `set_pair_kernel`

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.w_q, self.w_k, self.w_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.w_o = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [..., L, d] → [..., h, L, d_k]
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(-3, -2)

    def project_query(self, x: torch.Tensor) -> torch.Tensor:
        return self._split(self.w_q(x))  # eq (1): Q_j = i W_j^Q (all heads at once)

    def project_key_value(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._split(self.w_k(x)), self._split(self.w_v(x))  # eq (1): K_j = i W_j^K, V_j = i W_j^V

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        queries_first = _pair_sides(q, k) if self.pair_kernel == "batched" else None
        if queries_first is not None:
            return self._attend_pairs(q, k, v, key_mask, queries_first)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # eq (2): Q K^T / sqrt(d_k)
        if key_mask is not None:  # [..., Lk] True = a real key (padding words never attended)
            scores = scores.masked_fill(~key_mask[..., None, None, :], float("-inf"))
        heads = self.dropout(scores.softmax(-1)) @ v  # eqs (2)-(3): head_j = softmax(.) V_j
        return self.w_o(heads.transpose(-3, -2).flatten(-2))  # eq (4): concat(head_1..head_h) W^O

    def _attend_pairs(self, q, k, v, key_mask, queries_first: bool) -> torch.Tensor:
        """The `batched` kernel of eqs (2)-(4) for every (query item a, key item b) pair → [A, B, Lq, d]
        (or [B, A, Lq, d] when the queries are the second side: the output keeps the inputs' order)."""
        q = q[:, 0] if queries_first else q[0]  # [A, h, Lq, d_k]
        k, v = (k[0], v[0]) if queries_first else (k[:, 0], v[:, 0])  # [B, h, Lk, d_k]
        n_q, heads, len_q, head_dim = q.shape
        n_k, len_k = k.shape[0], k.shape[2]
        flat_q = q.transpose(0, 1).reshape(heads, n_q * len_q, head_dim)  # all queries of the block, per head
        flat_k = k.permute(1, 3, 0, 2).reshape(heads, head_dim, n_k * len_k)  # all keys of the block, per head
        # eq (2): one [A·Lq, d_k] × [d_k, B·Lk] product per head, every query against every key; neither
        # side is repeated per pair (a broadcast matmul would copy the queries B times)
        scores = torch.bmm(flat_q, flat_k).view(heads, n_q * len_q, n_k, len_k) / math.sqrt(head_dim)
        if key_mask is not None:  # [1, B, Lk] or [B, 1, Lk]: True = a real key
            keys = key_mask[0] if queries_first else key_mask[:, 0]
            scores = scores.masked_fill(~keys[None, None], float("-inf"))
        weights = self.dropout(scores.softmax(-1))  # eq (2): over each pair's own keys
        # eq (3): head_j = softmax(.) V_j per pair: batched over (head, key item); the only per-pair
        # operand laid out again is this weight matrix itself (the product's input)
        heads_out = weights.permute(0, 2, 1, 3) @ v.transpose(0, 1)  # [h, B, A·Lq, d_k]
        heads_out = heads_out.view(heads, n_k, n_q, len_q, head_dim)
        order = (2, 1, 3, 0, 4) if queries_first else (1, 2, 3, 0, 4)  # → [pair dims..., Lq, h, d_k]
        return self.w_o(heads_out.permute(order).flatten(-2))  # eq (4): concat(head_1..head_h) W^O

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.attend(self.project_query(query), *self.project_key_value(key_value), key_mask=key_mask)


class FeedForward(nn.Module):
    """Eq (5): FFN(x) = ReLU(x W_1 + b_1) W_2 + b_2."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w_1, self.w_2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(torch.relu(self.w_1(x))))  # eq (5)


class EncoderLayer(nn.Module):
    """Intra-PAM's visual phrase construction: regions attend to regions (eqs 1-5) → eq (6)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        self.attention = MultiHeadAttention(dim, heads, dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.norm_1, self.norm_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop_1, self.drop_2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm_1(x + self.drop_1(self.attention(x, x, mask)))  # x_k = MultiHead(i), residual + LN
        return self.norm_2(x + self.drop_2(self.ffn(x)))  # eq (6): r_k^V = FFN(x_k), residual + LN


class PairDecoderLayer(nn.Module):
    """Inter-PAM branch (§III-C): a transformer decoder layer without causal mask. `self_part` depends
    on one side only (regions self-attend → i^P); `cross_part` is the per-pair part (eqs 11-12)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        self.self_attention = MultiHeadAttention(dim, heads, dropout)
        self.cross_attention = MultiHeadAttention(dim, heads, dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.norm_1, self.norm_2, self.norm_3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop_1, self.drop_2, self.drop_3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def self_part(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """i^P = {p_1..p_m}: every element attends to the others of its own modality."""
        return self.norm_1(x + self.drop_1(self.self_attention(x, x, mask)))

    def cross_part(self, phrases: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """phrases [..., Lq, d] query the other modality's memory [..., Lk, d] (broadcast leading dims)."""
        attended = self.cross_attention(phrases, memory, memory_mask)  # eq (11): Q = i^P W^Q, K = c W^K, V = c W^V
        y = self.norm_2(phrases + self.drop_2(attended))
        return self.norm_3(y + self.drop_3(self.ffn(y)))  # eq (12): i^T = {vp_1^T..vp_m^T}

    def forward(self, x, memory, mask=None, memory_mask=None):
        return self.cross_part(self.self_part(x, mask), memory, memory_mask)


def set_pair_kernel(model: nn.Module, kernel: str) -> None:
    """Choose how every attention of `model` scores pairs: `batched` (default) or `broadcast`."""
    if kernel not in PAIR_KERNELS:
        raise ValueError(f"pair kernel {kernel!r}: choose one of {PAIR_KERNELS}")
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.pair_kernel = kernel
