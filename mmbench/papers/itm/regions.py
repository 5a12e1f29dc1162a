"""Region features as ITM distributes them, and the memory-mapped store `prepare` builds from them.

Upstream form (ITM's `extract_feat.py`, bottom-up-attention Faster R-CNN): one `{iid}.jpg.npz` per
image with `x` [feature_dim, num_regions] (pool5_flat, 2048 × 100), `bbox` [num_regions, 4]
(x1, y1, x2, y2 in original-image pixels), `image_h`, `image_w` (and `num_bbox`, unused).

Prepared form (`<prepared>/regions/`): `features.npy` [images, regions, dim] float32 (already
transposed to one row per region, as ITM's DataProcessor does), `boxes.npy` [images, regions, 4],
`sizes.npy` [images, 2] (h, w) and `ids.json` (image id per row). The arrays are opened with
`mmap_mode="r"`, so a run touches only the images of its batches.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from mmbench.errors import DataError

REGION_DIR = "regions"
FEATURE_SUFFIX = ".jpg.npz"


def feature_path(root: Path, iid: str) -> Path:
    if not iid or "/" in iid or "\\" in iid or iid.startswith(".") or not iid.isprintable():
        raise DataError(f"image id {iid!r} is not a plain file stem (features are {{iid}}{FEATURE_SUFFIX} under {root})")
    return root / f"{iid}{FEATURE_SUFFIX}"


def read_region_file(path: Path, feature_dim: int | None, num_regions: int | None) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(features [regions, dim], boxes [regions, 4], (h, w)) of one npz; every problem names the file."""
    if not path.exists():
        raise DataError(f"{path}: region feature file missing")
    _check_npz_headers(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in ("x", "bbox", "image_h", "image_w"):
                if key not in npz.files:
                    raise DataError(f"{path}:{key}: key missing (found {sorted(npz.files)})")
            x, bbox = np.asarray(npz["x"]), np.asarray(npz["bbox"])
            h, w = float(np.asarray(npz["image_h"]).reshape(-1)[0]), float(np.asarray(npz["image_w"]).reshape(-1)[0])
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable npz ({exc})") from None
    if x.ndim != 2 or (feature_dim is not None and x.shape[0] != feature_dim) or (num_regions is not None and x.shape[1] != num_regions):
        raise DataError(f"{path}:x: shape {list(x.shape)}, expected [{feature_dim or 'dim'}, {num_regions or 'regions'}]")
    if bbox.shape != (x.shape[1], 4):
        raise DataError(f"{path}:bbox: shape {list(bbox.shape)}, expected [{x.shape[1]}, 4]")
    if not (np.isfinite(x).all() and np.isfinite(bbox).all()):
        raise DataError(f"{path}: non-finite values in x or bbox")
    if h <= 0 or w <= 0:
        raise DataError(f"{path}:image_h/image_w: image size must be positive, found {h}×{w}")
    return x.T.astype(np.float32), bbox.astype(np.float32), (int(h), int(w))


MAX_MEMBER_BYTES = 1 << 28  # one image's regions are ~1 MB (2048 × 100 float32); 256 MB is no region file


def _check_npz_headers(path: Path) -> None:
    """Read each array's .npy header before its data: a header that claims more bytes than its member
    holds (or than any region file has) is refused, so a crafted 100-byte file cannot make np.load
    allocate 82 GB."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(member)
                if dtype.hasobject:
                    continue  # np.load(allow_pickle=False) refuses these itself
                claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if claimed > min(info.file_size, MAX_MEMBER_BYTES):
                    raise DataError(f"{path}:{info.filename[:-4]}: header claims {dtype} {list(shape)} ({claimed / 1e9:.3g} GB), "
                                    f"the file holds {info.file_size} bytes; not a region feature file")
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable npz ({exc})") from None


def write_region_file(path: Path, features: np.ndarray, boxes: np.ndarray, size: tuple[int, int]) -> None:
    """Write one npz in ITM's form (`features` is [regions, dim]; the file holds its transpose)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=features.T.astype(np.float32), bbox=boxes.astype(np.float32), num_bbox=len(boxes),
             image_h=size[0], image_w=size[1])


def build_region_store(features_root: Path, iids: list[str], out: Path, feature_dim: int | None, num_regions: int | None) -> dict:
    """Validate every image's npz and copy it into one memory-mappable store under `out/regions`.
    The first file fixes the shape when `feature_dim`/`num_regions` are None (synthetic data)."""
    iids = sorted(set(iids))
    if not iids:
        raise DataError(f"{features_root}: no image ids to index")
    first, boxes0, _ = read_region_file(feature_path(features_root, iids[0]), feature_dim, num_regions)
    num_regions, feature_dim = first.shape
    store = out / REGION_DIR
    store.mkdir(parents=True, exist_ok=True)
    feats = np.lib.format.open_memmap(store / "features.npy", mode="w+", dtype=np.float32, shape=(len(iids), num_regions, feature_dim))
    boxes = np.lib.format.open_memmap(store / "boxes.npy", mode="w+", dtype=np.float32, shape=(len(iids), num_regions, 4))
    sizes = np.zeros((len(iids), 2), dtype=np.int64)
    for row, iid in enumerate(iids):
        x, bbox, size = read_region_file(feature_path(features_root, iid), feature_dim, num_regions)
        feats[row], boxes[row], sizes[row] = x, bbox, size
    feats.flush()
    boxes.flush()
    del feats, boxes
    np.save(store / "sizes.npy", sizes)
    (store / "ids.json").write_text(json.dumps(iids))
    return {"images": len(iids), "num_regions": int(num_regions), "feature_dim": int(feature_dim), "root": str(features_root)}


class RegionStore:
    """Read-only view of a prepared region store, looked up by image id."""

    def __init__(self, prepared: Path):
        store = prepared / REGION_DIR
        if not (store / "ids.json").exists():
            raise DataError(
                f"{store}: no region features were indexed for this dataset; put ITM's {{iid}}{FEATURE_SUFFIX} "
                "files (Google Drive / Baidu links in NUSTM/ITM's README) in a folder and run "
                "`mmbench prepare <dataset> --raw DIR --images FEATURES_DIR`"
            )
        self.path = store
        self.ids = json.loads((store / "ids.json").read_text())
        self.row = {iid: i for i, iid in enumerate(self.ids)}
        self.features = np.load(store / "features.npy", mmap_mode="r")
        self.boxes = np.load(store / "boxes.npy", mmap_mode="r")
        self.sizes = np.load(store / "sizes.npy")

    @property
    def num_regions(self) -> int:
        return int(self.features.shape[1])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[2])

    def index(self, iid: str) -> int:
        if iid not in self.row:
            raise DataError(f"{self.path}: image {iid!r} has no region features in this store")
        return self.row[iid]
