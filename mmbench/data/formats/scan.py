"""SCAN's precomputed retrieval data (kuanghuei/SCAN, `data/{f30k_precomp|coco_precomp}`).

Layout of one dataset folder (the `--raw` directory):
- `{split}_caps.txt`: one caption per line, **5 consecutive captions per image** (caption j belongs to
  image j // 5); the Flickr30K test file has no final newline;
- `{split}_ims.npy`: float32 [N_images, 36, 2048] bottom-up region features, one row per image
  (COCO `train` alone is ~33 GB: it is memory-mapped, never loaded whole, and never hashed whole);
- COCO also has `{split}_ids.txt` (COCO image ids, not needed for retrieval) and the `testall` split
  (5K images / 25K captions; `test` is its first 1K images).

Rows of the prepared dataset: one per caption, {id, caption, image (row in `{split}_ims.npy`), label=0}.
Retrieval has no class labels: `label_names` is empty and `label` is a constant 0 because the
foundation's prepare counts a `label` column. The features are indexed by `prepare_extra`: their path,
shape and a cheap fingerprint (size + sha256 of the first and last MiB) go into the manifest under
`extra.features`; `open_features` memory-maps them back and checks shape, size and content (size + mtime, else the full
sha256 recorded at prepare).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np

from mmbench.data.catalog import DatasetSpec
from mmbench.data.formats import read_text
from mmbench.errors import DataError, located

CAPTIONS_PER_IMAGE = 5
REGIONS = 36
REGION_DIM = 2048
_FINGERPRINT_BYTES = 1 << 20
FEATURES_HELP = ("SCAN's precomputed bottom-up features (float32 [N, 36, 2048]; kuanghuei/SCAN README → "
                 "Kaggle kuanghueilee/scan-features data.zip, data/{folder}/{split}_ims.npy)")


def read_captions(path: Path) -> list[str]:
    """SCAN reads `line.strip()` for every line; a trailing newline (or none) ends the file."""
    lines = read_text(path, "captions file (SCAN's {split}_caps.txt)").split("\n")
    if lines and lines[-1].strip() == "":
        lines.pop()  # the final newline, when the file has one
    captions = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            raise DataError(located(path, number, "empty caption line"))
        captions.append(text)
    if len(captions) % CAPTIONS_PER_IMAGE:
        raise DataError(located(path, len(captions), f"{len(captions)} captions is not a multiple of "
                                                     f"{CAPTIONS_PER_IMAGE} (5 consecutive captions per image)"))
    return captions


def read_split(raw_dir: Path, split: str) -> tuple[list[dict], list[Path]]:
    path = raw_dir / f"{split}_caps.txt"
    captions = read_captions(path)
    rows = [{"id": f"{split}-{j}", "caption": text, "image": j // CAPTIONS_PER_IMAGE, "label": 0}
            for j, text in enumerate(captions)]
    return rows, [path]


# -- region features ---------------------------------------------------------------------------------
def fingerprint(path: Path) -> str:
    """sha256 of (size, first MiB, last MiB): cheap enough for 33 GB files, catches swapped files."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(_FINGERPRINT_BYTES))
        handle.seek(max(0, size - _FINGERPRINT_BYTES))
        digest.update(handle.read(_FINGERPRINT_BYTES))
    return digest.hexdigest()


def load_features(path: Path) -> np.ndarray:
    if not path.exists():
        raise DataError(f"{path}: region features missing; need {FEATURES_HELP.format(folder=path.parent.name, split=path.stem.removesuffix('_ims'))}")
    if not path.is_file():
        raise DataError(f"{path}: is a folder, expected a .npy file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file, expected a float32 [N, regions, dim] .npy array")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)  # never loaded whole
    except (ValueError, OSError, EOFError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not a .npy array ({first})") from None
    if array.ndim != 3 or array.dtype != np.float32 or 0 in array.shape:
        raise DataError(f"{path}: expected float32 [N, regions, dim], found {array.dtype} {list(array.shape)}")
    return array


def check_finite(path: Path, array: np.ndarray, rows: int = 256) -> None:
    """NaN/inf features would train silently into NaN scores: checked at prepare, a block of rows at a time."""
    for start in range(0, array.shape[0], rows):
        block = np.asarray(array[start : start + rows])
        if not np.isfinite(block).all():
            bad = start + int(np.argwhere(~np.isfinite(block))[0][0])
            raise DataError(located(path, f"[{bad}]", "non-finite (NaN or inf) region feature"))


def index_features(raw: Path, out: Path, images: Path, splits: dict[str, list[dict]], synthetic: bool,
                   allow_count_mismatch: bool = False) -> dict:
    """`prepare_extra`: check every split's features against its captions and record where they are."""
    from mmbench.data.prepare import sha256_file

    features = {}
    dims = set()
    for split, rows in splits.items():
        path = raw / f"{split}_ims.npy"
        array = load_features(path)
        n_images = len(rows) // CAPTIONS_PER_IMAGE
        if array.shape[0] != n_images:
            raise DataError(f"{path}: {array.shape[0]} image rows for {len(rows)} captions in {split}_caps.txt "
                            f"(expected {n_images} = captions / {CAPTIONS_PER_IMAGE})")
        check_finite(path, array)
        dims.add(tuple(array.shape[1:]))
        features[split] = {"path": str(path.resolve()), "shape": list(array.shape), "dtype": "float32",
                           "bytes": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns,
                           "fingerprint": fingerprint(path), "sha256": sha256_file(path)}
    if len(dims) > 1:
        raise DataError(f"{raw}: splits have different region feature shapes {sorted(dims)}")
    regions, dim = dims.pop()
    return {"features": features, "regions": regions, "region_dim": dim,
            "captions_per_image": CAPTIONS_PER_IMAGE}


def open_features(manifest: dict, split: str) -> np.ndarray:
    """The memory-mapped features a prepared split points at, checked against the manifest."""
    try:
        entry = manifest["extra"]["features"][split]
    except KeyError:
        raise DataError(f"prepared {manifest.get('dataset')}: manifest has no extra.features.{split}; "
                        "re-run `mmbench prepare`") from None
    path = Path(entry["path"])
    array = load_features(path)
    if list(array.shape) != entry["shape"] or path.stat().st_size != entry["bytes"]:
        raise DataError(f"{path}: changed since prepare (shape {list(array.shape)}, manifest {entry['shape']}); "
                        "re-run `mmbench prepare`")
    check_unchanged(path, entry)
    return array


VERIFY_ENV = "MMBENCH_VERIFY_DATA"  # =1: hash every feature file in full at every open


def check_unchanged(path: Path, entry: dict) -> None:
    """The file is the one prepare indexed: same size and mtime (fast path), else — or with
    MMBENCH_VERIFY_DATA=1 — its full sha256 must equal the manifest's (a touched but unchanged file
    passes). A manifest from before the full hash has only the head/tail fingerprint to compare."""
    import os

    from mmbench.data.prepare import sha256_file

    same_stat = path.stat().st_mtime_ns == entry.get("mtime_ns") and path.stat().st_size == entry.get("bytes")
    if same_stat and os.environ.get(VERIFY_ENV, "") not in ("1", "true", "yes"):
        return
    recorded, actual = (entry["sha256"], sha256_file(path)) if entry.get("sha256") else (entry.get("fingerprint"), fingerprint(path))
    if actual != recorded:
        raise DataError(f"{path}: changed since prepare (sha256 {actual[:12]}…, manifest {str(recorded)[:12]}…); "
                        "re-run `mmbench prepare` to use the new file")


# -- synthetic data in the same layout ---------------------------------------------------------------
CONCEPTS = ["alice", "bob", "carol", "dave", "eve", "frank", "grace", "heidi", "ivan", "judy",
            "oscar", "peggy", "trent", "victor", "walter", "boston", "paris", "texas"]
FILLERS = ["the", "photo", "city", "game", "night", "new", "video", "today", "news"]
SYNTHETIC_DIM = 64  # the real features are 2048-d; small here so tests stay fast


def write_synthetic_split(raw_dir: Path, split: str, n_images: int, rng: random.Random,
                          np_rng: np.random.Generator, concept_vectors: np.ndarray) -> None:
    """Each image holds 2-3 concepts; a few of its 36 regions carry a concept's vector plus noise, the
    rest are noise. Each caption names 1-3 of the image's concepts among filler words."""
    feats = np_rng.normal(0.0, 0.5, size=(n_images, REGIONS, concept_vectors.shape[1])).astype(np.float32)
    captions = []
    for image in range(n_images):
        concepts = rng.sample(range(len(CONCEPTS)), rng.randint(2, 3))
        regions = rng.sample(range(REGIONS), 3 * len(concepts))
        for k, region in enumerate(regions):
            feats[image, region] += concept_vectors[concepts[k % len(concepts)]]
        for _ in range(CAPTIONS_PER_IMAGE):
            named = rng.sample(concepts, rng.randint(1, len(concepts)))
            words = [rng.choice(FILLERS)]
            for concept in named:
                words += [CONCEPTS[concept], rng.choice(FILLERS)]
            captions.append(" ".join(words) + " .")
    np.save(raw_dir / f"{split}_ims.npy", feats)
    (raw_dir / f"{split}_caps.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")


def _writer(split_images: dict[str, int]):
    def write(raw_dir: Path, images_dir: Path, seed: int = 7) -> None:
        raw_dir.mkdir(parents=True, exist_ok=True)
        rng, np_rng = random.Random(seed), np.random.default_rng(seed)
        concept_vectors = np_rng.normal(0.0, 1.5, size=(len(CONCEPTS), SYNTHETIC_DIM)).astype(np.float32)
        for split, n_images in split_images.items():
            if split == "test" and "testall" in split_images:
                continue  # COCO's 1K test is the first 1K images of testall (below)
            write_synthetic_split(raw_dir, split, n_images, rng, np_rng, concept_vectors)
        if "testall" in split_images:
            n = split_images["test"]
            feats = np.load(raw_dir / "testall_ims.npy")[:n]
            np.save(raw_dir / "test_ims.npy", feats)
            caps = (raw_dir / "testall_caps.txt").read_text(encoding="utf-8").split("\n")[: n * CAPTIONS_PER_IMAGE]
            (raw_dir / "test_caps.txt").write_text("\n".join(caps) + "\n", encoding="utf-8")
    return write


FLICKR30K_SPEC = DatasetSpec(
    name="flickr30k",
    title="Flickr30K (SCAN precomp, 29000/1014/1000 images × 5 captions)",
    source="SCAN's data/f30k_precomp ({train,dev,test}_caps.txt from kuanghuei/SCAN; "
           + FEATURES_HELP.format(folder="f30k_precomp", split="{split}") + ")",
    read_split=read_split,
    write_synthetic=_writer({"train": 48, "dev": 16, "test": 16}),
    published_counts={"train": 145000, "dev": 5070, "test": 5000},
    label_names=(),
    prepare_extra=index_features,
)

COCO_SPEC = DatasetSpec(
    name="coco",
    title="MS-COCO (SCAN precomp, 113287/5000/5000 images × 5 captions; 1K test and 5K testall)",
    source="SCAN's data/coco_precomp ({train,dev,test,testall}_caps.txt; "
           + FEATURES_HELP.format(folder="coco_precomp", split="{split}") + ")",
    read_split=read_split,
    # testall must split into 5 folds: 25 synthetic images = 5 folds of 5
    write_synthetic=_writer({"train": 48, "dev": 16, "test": 5, "testall": 25}),
    published_counts={"train": 566435, "dev": 25000, "test": 5000, "testall": 25000},
    label_names=(),
    splits=("train", "dev", "test", "testall"),
    prepare_extra=index_features,
)
