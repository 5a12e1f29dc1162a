"""Small collation helpers shared by the methods."""

from __future__ import annotations

import torch


def pad_sequences(sequences: list[list[int]], pad: int = 0, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token-id lists to one length: (ids [B, L], mask [B, L] with 1 on real tokens)."""
    length = length or max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask
