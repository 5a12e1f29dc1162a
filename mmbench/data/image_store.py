"""Decoded-image store: every image decoded once, resized/cropped to the encoder's input resolution by
the encoder's own Hugging Face image processor, and kept as uint8 in a memory-mapped array; training
reads slices and normalises on the device.

Why: decoding a JPEG and resizing it with PIL costs milliseconds per image on one CPU core, far more
than a ViT step on a GPU; the per-batch PIL + processor path starves the accelerator. The geometric
stage of a processor (convert to RGB, resize, centre crop) gives whole numbers in 0..255 (PIL works on
uint8), so it is stored exactly; only the rescale + normalisation, which are cheap elementwise
arithmetic, are left for the step, done as the processor does them (rescale in float64 to float32,
then `(x - mean) / std` in float32), so the values equal the processor's output to its rounding.

Content-keyed like the feature cache (it is one: `mmbench.data.feature_cache.FeatureCache`, name
`decoded-images`): the key holds the processor's whole configuration and each image file's path,
size and modification time, so a changed processor or a replaced image makes a new store. A file
that cannot be decoded fails the build with its path (nothing half-built is ever read).

    store = ImageStore.open(paths, processor)                # builds on first use, then maps the array
    pixels = store.batch(paths_of_batch, device)             # float pixel_values [B, 3, H, W] on the device
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mmbench.data.feature_cache import FeatureCache
from mmbench.data.images import load_rgb
from mmbench.errors import DataError

STORE_VERSION = 1
CACHE_NAME = "decoded-images"
_NORMALISATION_KEYS = ("do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std")


def _processor_config(processor) -> dict:
    config = processor.to_dict() if hasattr(processor, "to_dict") else dict(vars(processor))
    return {k: v for k, v in config.items() if not k.startswith("_") and k != "processor_class"}


def _torch_backend(processor) -> bool:
    """Processors that normalise torch tensors (transformers' torchvision backend / "fast" processors)."""
    return bool({c.__name__ for c in type(processor).__mro__} & {"TorchvisionBackend", "BaseImageProcessorFast"})


def _file_identity(path: str) -> list:
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise DataError(f"{path}: image not readable ({exc.strerror})") from None
    return [path, stat.st_size, stat.st_mtime_ns]


def _geometry(processor, images: list, names: list[str]) -> np.ndarray:
    """The processor's resize/crop without rescale/normalisation: uint8 [B, 3, H, W]."""
    out = np.asarray(processor(images, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"])
    if out.dtype != np.uint8:
        if not np.array_equal(out, np.round(out)) or out.min() < 0 or out.max() > 255:
            raise DataError(f"{type(processor).__name__}: its resize/crop of {names[0]} gives non-integer pixels; "
                            "a uint8 store cannot hold them exactly (use the per-batch processor path)")
        out = out.astype(np.uint8)
    return out


class ImageStore:
    def __init__(self, pixels: np.ndarray, rows: dict[str, int], processor):
        self.pixels, self.rows = pixels, rows
        config = _processor_config(processor)
        self.processor, self.config, self.torch_backend = processor, config, _torch_backend(processor)
        self.scale = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else None
        self.normalise = bool(config.get("do_normalize", True))
        self.mean = torch.tensor(config.get("image_mean", [0.0] * 3), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(config.get("image_std", [1.0] * 3), dtype=torch.float32).view(1, -1, 1, 1)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape[1:])

    @classmethod
    def open(cls, paths: Sequence[str | Path | None], processor, root: Path | None = None, workers: int = 2,
             chunk: int = 64) -> "ImageStore":
        """The store of these image files (None entries are blanks and take no row), built if needed."""
        unique = sorted({str(p) for p in paths if p is not None})
        if not unique:
            raise DataError("decoded-image store: no image files given")
        key = {"version": STORE_VERSION, "processor": type(processor).__name__, "config": _processor_config(processor),
               "files": [_file_identity(p) for p in unique]}
        cache = FeatureCache(key, CACHE_NAME, root)
        if not cache.complete:
            cls._build(cache, unique, processor, workers, chunk)
        return cls(cache.open()["pixels"], {p: i for i, p in enumerate(unique)}, processor)

    @staticmethod
    def _build(cache: FeatureCache, files: list[str], processor, workers: int, chunk: int) -> None:
        def decode(start: int) -> tuple[int, dict]:
            names = files[start : start + chunk]
            images = []
            for name in names:  # load_rgb names the file it cannot decode
                images.append(load_rgb(Path(name)))
            try:
                return start, {"pixels": _geometry(processor, images, names)}
            except DataError:
                raise
            except Exception as exc:  # a processor error on one of these files: say which ones
                raise DataError(f"{names[0]}…{names[-1]}: image processor failed ({exc})") from None

        first = decode(0)  # its shape sizes the array
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # PIL decodes and resizes without the GIL
            rest = pool.map(decode, range(chunk, len(files), chunk))
            cache.build(len(files), {"pixels": (tuple(first[1]["pixels"].shape[1:]), "uint8")}, itertools.chain([first], rest))

    def uint8(self, paths: Sequence[str | Path | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 pixels [B, 3, H, W] read from the map, present [B] bool); blanks are black."""
        present = torch.tensor([p is not None for p in paths], dtype=torch.bool)
        rows = [self.rows[str(p)] for p in paths if p is not None]
        if len(rows) == len(paths):  # no blanks: one gather from the map, no extra copy
            return torch.from_numpy(np.ascontiguousarray(self.pixels[np.asarray(rows)])), present
        out = torch.zeros((len(paths), *self.shape), dtype=torch.uint8)
        if rows:
            out[present] = torch.from_numpy(np.ascontiguousarray(self.pixels[np.asarray(rows)]))
        return out, present

    def normalize(self, pixels: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """uint8 → the processor's pixel_values, on `pixels`' device, by the processor's own arithmetic:
        a torch-backend processor's `rescale_and_normalize` itself; for a NumPy/PIL one, rescale in
        float64 then float32 and (x - mean) / std in float32, as it does. Cast to `dtype` last."""
        if self.torch_backend:
            c = self.config
            x = self.processor.rescale_and_normalize(pixels, c.get("do_rescale", True), c.get("rescale_factor", 1 / 255),
                                                     c.get("do_normalize", True), c.get("image_mean"), c.get("image_std"))
            x = x.to(torch.float32) if not x.is_floating_point() else x
            return x if dtype is None else x.to(dtype)
        x = pixels.to(torch.float64) * self.scale if self.scale is not None else pixels.to(torch.float64)
        x = x.to(torch.float32)
        if self.normalise:
            x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x if dtype is None else x.to(dtype)

    def batch(self, paths: Sequence[str | Path | None], device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
              blank: str = "black") -> torch.Tensor:
        """pixel_values for these files on `device`. A None path is a blank: `black` is a black image
        through the processor, `zeros` is all zeros after normalisation (the mean image)."""
        if blank not in ("black", "zeros"):
            raise DataError(f"blank={blank!r}: expected black or zeros")
        raw, present = self.uint8(paths)
        out = self.normalize(raw.to(device, non_blocking=True), dtype)
        if blank == "zeros" and not bool(present.all()):
            out[~present.to(out.device)] = 0
        return out


def image_paths(root: Path, image_ids: Sequence[str], policy: str = "error", substitute: str | None = None) -> dict[str, str | None]:
    """Each image id's file under the recipe's `data.missing_image` policy; None: a blank (policy `blank`)."""
    from mmbench.data.images import resolve_image

    out: dict[str, str | None] = {}
    for image_id in dict.fromkeys(image_ids):
        try:
            out[image_id] = str(resolve_image(Path(root), image_id, policy, substitute))
        except DataError:
            if policy != "blank":
                raise
            out[image_id] = None
    return out
