"""A content-keyed, memory-mapped cache of frozen-encoder outputs.

The key is a dict of everything that changes the features (encoder name and weights, transform,
image size, max length, split, dataset manifest hash, ...); its sha256 names the cache folder, so a
change of any part makes a new cache. A cache is built in a temp folder and renamed into place only
when complete (`meta.json` written last), so a half-written cache is never read.

    cache = FeatureCache(key={"encoder": "bert-base-uncased", "split": "train", ...}, name="bert-text")
    if not cache.complete:
        cache.build(n, {"cls": ((4, 768), "float32")}, batches())   # batches yields (start, {field: array})
    arrays = cache.open()                                              # {field: np.memmap}, read-only
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from mmbench.errors import DataError
from mmbench.paths import data_root

META = "meta.json"


def cache_digest(key: dict) -> str:
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class FeatureCache:
    def __init__(self, key: dict, name: str = "features", root: Path | None = None):
        import torch

        # The compute dtype is part of every key: a frozen encoder run in float64 (smoke runs, see
        # mmbench.engine.precision) and in float32 gives features that differ in the last bits, and a
        # cache filled by one must never be read by the other (it would move golden numbers).
        self.key = {**key, "compute_dtype": str(torch.get_default_dtype())}
        self.dir = (root or data_root() / "cache") / name / cache_digest(self.key)

    @property
    def complete(self) -> bool:
        return (self.dir / META).exists()

    def build(self, n: int, fields: dict[str, tuple[tuple[int, ...], str]],
              batches: Iterable[tuple[int, dict[str, np.ndarray]]]) -> None:
        tmp = self.dir.with_name(f".{self.dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            arrays = {f: np.lib.format.open_memmap(tmp / f"{f}.npy", mode="w+", dtype=dtype, shape=(n, *shape))
                      for f, (shape, dtype) in fields.items()}
            filled = 0
            for start, values in batches:
                for f, value in values.items():
                    arrays[f][start : start + len(value)] = value
                filled = max(filled, start + len(next(iter(values.values()))))
            if filled != n:
                raise DataError(f"{self.dir}: cache build produced {filled} rows, expected {n}")
            for array in arrays.values():
                array.flush()
            del arrays
            meta = {"key": self.key, "n": n, "fields": {f: [list(s), d] for f, (s, d) in fields.items()},
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (tmp / META).write_text(json.dumps(meta, indent=2, default=str))
            if self.dir.exists():
                shutil.rmtree(self.dir)
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(self.dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def open(self) -> dict[str, np.ndarray]:
        if not self.complete:
            raise DataError(f"{self.dir}: feature cache is not complete; build it first")
        meta = json.loads((self.dir / META).read_text())
        return {f: np.load(self.dir / f"{f}.npy", mmap_mode="r") for f in meta["fields"]}
