"""DCPA's frozen BERT word features (§III-A, §IV-B "We set the pretrained BERT model fixed"), computed
once per (encoder, captions file) and kept in the shared content-keyed feature cache, so training
epochs never run BERT.

Captions have different lengths, so the cache is ragged: `words` holds every caption's token features
back to back ([total tokens, hidden]) and a second cache holds each caption's `offset` and `length`.
The index is built after the tokens, so a complete index implies complete tokens. The cache keeps every
token; what a caption's words are is decided when they are read (`WordFeatures`): by default its word
features only, without the [CLS] and [SEP] that BERT's tokenizer adds around every caption (the paper's
c = {w_1..w_n} are "the words of the sentence"; the two markers would be 2 of the ≈13 tokens of a COCO
caption in eq 10's top-K and in eqs 7-9's n-grams). `special_tokens="keep"` reads them as words too.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from mmbench.data.feature_cache import FeatureCache
from mmbench.encoders.text import load_text_encoder
from mmbench.encoders.tiny import TINY_TEXT

CACHE_NAME = "dcpa-words"
CACHE_VERSION = 1


def load_frozen_encoder(name: str):
    """(model, tokenizer); a tiny random preset is built under a fixed seed so its cache is shareable."""
    if name in TINY_TEXT:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return load_text_encoder(name)
    return load_text_encoder(name)


SPECIAL_TOKENS = ("drop", "keep")


class WordFeatures:
    """Read side: the padded word features of any set of captions."""

    def __init__(self, words: np.ndarray, offset: np.ndarray, length: np.ndarray, special_tokens: str = "drop"):
        if special_tokens not in SPECIAL_TOKENS:
            raise ValueError(f"special_tokens={special_tokens!r}: choose one of {SPECIAL_TOKENS}")
        self.words = words
        self.offset, self.length = np.asarray(offset, dtype=np.int64), np.asarray(length, dtype=np.int64)
        if special_tokens == "drop":  # [CLS] w_1..w_n [SEP] → w_1..w_n; a caption with no word keeps both
            words_only = self.length > 2
            self.offset = self.offset + words_only
            self.length = self.length - 2 * words_only

    @property
    def dim(self) -> int:
        return int(self.words.shape[1])

    def __len__(self) -> int:
        return len(self.offset)

    def lengths(self) -> list[int]:
        """Each caption's number of words (as `batch` reads them)."""
        return self.length.tolist()

    def batch(self, captions: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = [int(self.length[c]) for c in captions]
        out = np.zeros((len(captions), max(lengths), self.dim), dtype=np.float32)
        for row, (c, n) in enumerate(zip(captions, lengths)):
            start = int(self.offset[c])
            out[row, :n] = self.words[start : start + n]
        mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
        return torch.from_numpy(out).to(device), mask.to(device)


def word_features(captions: list[str], key: dict, encoder: str, max_length: int, dtype: str,
                  device: torch.device, special_tokens: str = "drop", batch_size: int = 128) -> WordFeatures:
    """Open the cache for these captions, building it first if needed."""
    # The captions themselves are part of the key: the same captions file read with `data.subset=N`
    # gives fewer captions, and a cache built from them must never serve the full split.
    digest = hashlib.sha256("\n".join(captions).encode("utf-8")).hexdigest()
    key = {**key, "encoder": encoder, "max_length": max_length, "dtype": dtype, "version": CACHE_VERSION,
           "n_captions": len(captions), "captions_digest": digest}
    tokens_cache = FeatureCache({**key, "part": "tokens"}, CACHE_NAME)
    index_cache = FeatureCache({**key, "part": "index"}, CACHE_NAME)
    if not (tokens_cache.complete and index_cache.complete):
        _build(captions, tokens_cache, index_cache, encoder, max_length, dtype, device, batch_size)
    index = index_cache.open()
    return WordFeatures(tokens_cache.open()["words"], index["offset"], index["length"], special_tokens)


def _build(captions, tokens_cache, index_cache, encoder, max_length, dtype, device, batch_size) -> None:
    model, tokenizer = load_frozen_encoder(encoder)
    model = model.to(device).eval()
    ids = tokenizer(captions, truncation=True, max_length=max_length)["input_ids"]
    length = np.array([len(x) for x in ids], dtype=np.int32)
    offset = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
    hidden = model.config.hidden_size

    def batches():
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            longest = max(len(x) for x in chunk)
            input_ids = torch.full((len(chunk), longest), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), longest), dtype=torch.long)
            for row, x in enumerate(chunk):
                input_ids[row, : len(x)] = torch.tensor(x)
                mask[row, : len(x)] = 1
            with torch.no_grad():
                states = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            states = states.float().cpu().numpy()
            flat = np.concatenate([states[row, : len(x)] for row, x in enumerate(chunk)]).astype(dtype)
            yield int(offset[start]), {"words": flat}

    tokens_cache.build(int(length.sum()), {"words": ((hidden,), dtype)}, batches())
    index_cache.build(len(ids), {"offset": ((), "int64"), "length": ((), "int32")},
                      [(0, {"offset": offset, "length": length})])
