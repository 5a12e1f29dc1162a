"""DCPA's Bi-GRU text backbone (Table I `[GRU]` rows; §IV-D "Impact of Different Backbone": "changing
the textual backbone from BERT to a Bi-GRU"). The paper gives no detail, so it follows SCAN (Lee et al.
2018, kuanghuei/SCAN `EncoderText` + `vocab.py`), whose data and protocol DCPA uses:

- vocabulary: lower-cased word tokens of the training captions kept when they occur ≥ 4 times, after
  SCAN's specials `<pad>` `<start>` `<end>` `<unk>` (ids 0-3); a caption is `<start>` w_1..w_n `<end>`;
- a word embedding (300-d, uniform(-0.1, 0.1) init) and a 1-layer bidirectional GRU whose forward
  and backward hidden states are averaged: w_t = (→h_t + ←h_t) / 2, one [hidden]-d feature per token.

Unlike frozen BERT (text.py) it is trained with the model, so nothing is cached: captions are kept
as token ids and the GRU runs in every step. The vocabulary is stored in the encoder as a byte buffer,
so a checkpoint carries the vocabulary it was trained with.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mmbench.errors import MmbenchError

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)  # SCAN's order: ids 0, 1, 2, 3

# nltk's word_tokenize is what SCAN uses; nltk is not installed, so this regex mimics it on captions:
# clitics split off ("don't" → do n't, "dog's" → dog 's), hyphenated words kept whole, every other
# non-space, non-word character its own token.
_TOKEN = re.compile(r"[a-z0-9]+(?=n't)|n't|'[a-z]+|[a-z0-9]+(?:-[a-z0-9]+)*|[^\sa-z0-9]")


def tokenize(caption: str) -> list[str]:
    return _TOKEN.findall(caption.lower())


def build_vocab(captions: Iterable[str], threshold: int = 4) -> list[str]:
    """SCAN's vocab.py: specials, then every word seen ≥ threshold times. SCAN's order came from a
    Python 2 dict (arbitrary); ours is alphabetical, so the same captions always give the same ids."""
    counts = Counter(token for caption in captions for token in tokenize(caption))
    return [*SPECIALS, *sorted(w for w, n in counts.items() if n >= threshold and w not in SPECIALS)]


def encode(caption: str, index: dict[str, int]) -> list[int]:
    """SCAN's data.py: [<start>] + tokens + [<end>], unknown words → <unk>."""
    unk = index[UNK]
    return [index[START], *(index.get(t, unk) for t in tokenize(caption)), index[END]]


class TokenIds:
    """Read side of a split's captions as token ids; same `batch` interface as text.WordFeatures,
    but it returns ids [B, n] (padded with <pad> = 0) for the Bi-GRU instead of word features."""

    def __init__(self, captions: list[str], vocab: list[str]):
        index = {w: i for i, w in enumerate(vocab)}
        self.ids = [np.asarray(encode(c, index), dtype=np.int64) for c in captions]

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]

    def batch(self, captions: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = [len(self.ids[c]) for c in captions]
        out = torch.zeros((len(captions), max(lengths)), dtype=torch.long)  # <pad> = 0
        for row, c in enumerate(captions):
            out[row, : lengths[row]] = torch.from_numpy(self.ids[c])
        mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
        return out.to(device), mask.to(device)


def vocab_to_bytes(vocab: list[str]) -> torch.Tensor:
    return torch.tensor(list("\n".join(vocab).encode("utf-8")), dtype=torch.uint8)


def vocab_from_bytes(buffer: torch.Tensor) -> list[str]:
    return bytes(buffer.tolist()).decode("utf-8").split("\n")


class BiGRUWordEncoder(nn.Module):
    """Token ids [B, n] + mask [B, n] → word features [B, n, hidden] (zeros at padding)."""

    def __init__(self, vocab: list[str], embed_dim: int = 300, hidden: int = 1024, layers: int = 1):
        super().__init__()
        self.hidden = hidden
        self.embed = nn.Embedding(len(vocab), embed_dim)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)  # SCAN's init_weights
        self.gru = nn.GRU(embed_dim, hidden, layers, batch_first=True, bidirectional=True)
        self.register_buffer("vocab_utf8", vocab_to_bytes(vocab))  # the checkpoint's own vocabulary

    @property
    def vocab(self) -> list[str]:
        return vocab_from_bytes(self.vocab_utf8)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1).clamp(min=1).cpu()
        # packed, so the backward direction starts at each caption's last word, not at its padding
        packed = pack_padded_sequence(self.embed(ids), lengths, batch_first=True, enforce_sorted=False)
        states, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=ids.shape[1])
        return (states[..., : self.hidden] + states[..., self.hidden :]) / 2  # (→h_t + ←h_t) / 2


def check_checkpoint_vocab(path: str, vocab: list[str]) -> None:
    """A stage-1 checkpoint trained with another vocabulary would silently mis-map every word."""
    from pathlib import Path

    from mmbench.engine.checkpoint import load_plain

    state = load_plain(Path(path))  # weights_only=True: a crafted file cannot run code
    state = state.get("model", state) if isinstance(state, dict) else {}
    stored = state.get("intra.word_encoder.vocab_utf8")
    if stored is None:
        raise MmbenchError(f"{path}: not a Bi-GRU DCPA checkpoint (no intra.word_encoder.vocab_utf8); "
                           "model.text_backbone must match the stage-1 run")
    if vocab_from_bytes(stored) != vocab:
        raise MmbenchError(f"{path}: its Bi-GRU vocabulary differs from the one built from this run's "
                           "training captions (model.vocab_threshold / model.vocab_splits / data.subset)")
