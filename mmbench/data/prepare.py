"""`mmbench prepare`: raw upstream files → a prepared dataset (Hugging Face `datasets` on disk) and a
manifest (sha256 of each raw file, counts per split and label, mmbench version). Counts are checked
against the published statistics. The output appears whole or not at all (temp dir + rename)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path

from mmbench import __version__
from mmbench.data.atomic_dir import build_atomically, finish_interrupted, held_temp_dir, swap_in
from mmbench.data.catalog import DatasetSpec, get_dataset
from mmbench.data.images import safe_image_path
from mmbench.errors import DataError
from mmbench.paths import data_root

MANIFEST = "manifest.json"


def prepared_dir(name: str, synthetic: bool, root: Path | None = None) -> Path:
    return (root or data_root()) / "prepared" / (f"{name}-synthetic" if synthetic else name)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def label_counts(rows: list[dict], n_labels: int) -> list[int]:
    counts = Counter(row["label"] for row in rows)
    return [counts.get(i, 0) for i in range(n_labels)]


def check_counts(spec: DatasetSpec, counts: dict[str, int], labels: dict[str, list[int]]) -> list[str]:
    problems = []
    for split, expected in spec.published_counts.items():
        if counts.get(split) != expected:
            problems.append(f"{split}: {counts.get(split)} examples, published {expected}")
    for split, expected in spec.published_label_counts.items():
        if tuple(labels.get(split, ())) != tuple(expected):
            problems.append(f"{split} labels {labels.get(split)}, published {list(expected)}")
    return problems


def _quiet_datasets() -> None:
    import datasets

    datasets.disable_progress_bars()


def prepare(
    name: str,
    raw: Path | None = None,
    images: Path | None = None,
    out: Path | None = None,
    synthetic: bool = False,
    allow_count_mismatch: bool = False,
) -> dict:
    """Prepare one dataset; returns its manifest."""
    from datasets import Dataset, DatasetDict

    _quiet_datasets()
    spec = get_dataset(name)
    images_given = images
    out = out or prepared_dir(name, synthetic)
    if synthetic:
        generated = raw is None  # our own folder under data/raw: rebuilt when half-written
        raw = raw or data_root() / "raw" / f"{name}-synthetic"
        images = images or raw / "images"
        write_synthetic_raw(spec, raw, images, generated)
    raw = raw or data_root() / "raw" / name
    if not raw.is_dir():
        raise DataError(f"{raw}: raw data for {name} not found; get it from {spec.source} and pass --raw DIR")
    if images_given is not None and not images.is_dir():
        raise DataError(f"{images}: --images folder not found" if not images.exists() else f"{images}: --images is not a folder")
    images = images or data_root() / "images" / name
    finish_interrupted(out)  # a prepare killed mid-swap: the old output comes back before anything is checked
    check_out(out, raw, images)

    splits, files = {}, {}
    for split in spec.splits:
        rows, read = spec.read_split(raw, split)
        splits[split] = rows
        for path in read:
            files[str(path.relative_to(raw))] = sha256_file(path)
    counts = {split: len(rows) for split, rows in splits.items()}
    labels = {split: label_counts(rows, len(spec.label_names)) for split, rows in splits.items()}
    problems = [] if synthetic else check_counts(spec, counts, labels)
    if problems and not allow_count_mismatch:
        raise DataError(f"{raw}: counts differ from the published statistics ({'; '.join(problems)}); "
                        "pass --allow-count-mismatch to prepare anyway")
    missing = _count_missing_images(images, splits)

    manifest = {
        "dataset": name,
        "synthetic": synthetic,
        "mmbench_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "raw_dir": str(raw),
        "images_root": str(images),
        "raw_files": files,
        "counts": counts,
        "label_counts": labels,
        "label_names": list(spec.label_names),
        "published_counts": spec.published_counts,
        "count_check": "synthetic (not checked)" if synthetic else ("ok" if not problems else "mismatch allowed: " + "; ".join(problems)),
        "missing_images": missing,
    }
    with held_temp_dir(out) as tmp:  # see mmbench.data.atomic_dir: whole or not at all, even when killed
        DatasetDict({split: Dataset.from_list(rows) for split, rows in splits.items()}).save_to_disk(str(tmp / "dataset"))
        if spec.prepare_extra is not None:
            manifest["extra"] = spec.prepare_extra(raw=raw, out=tmp, images=images, splits=splits, synthetic=synthetic,
                                                   allow_count_mismatch=allow_count_mismatch)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        swap_in(tmp, out)
    return manifest


SYNTHETIC_MARK = ".mmbench-synthetic-complete"


def write_synthetic_raw(spec: DatasetSpec, raw: Path, images: Path, generated: bool) -> None:
    """The synthetic raw files, generated into a temp folder and renamed into place with a marker file
    written last. A folder of ours without the marker (a generator killed before this change, or a
    copy cut short) is rebuilt; a folder given with --raw is the user's and used as it is."""
    finish_interrupted(raw)
    if raw.exists() and (not generated or (raw / SYNTHETIC_MARK).exists()):
        return
    if raw.exists():  # ours and half-written
        with held_temp_dir(raw, "old") as old:
            os.replace(raw, old / "previous")

    def build(tmp: Path) -> None:
        inside = images.resolve().is_relative_to(raw.resolve())
        spec.write_synthetic(tmp, tmp / images.resolve().relative_to(raw.resolve()) if inside else images)
        (tmp / SYNTHETIC_MARK).write_text("written whole by mmbench prepare --synthetic\n")

    build_atomically(raw, build)


def _count_missing_images(images: Path, splits: dict[str, list[dict]]) -> dict[str, int] | None:
    if not images.is_dir():
        return None  # images are optional at prepare time (text-only methods never read them)
    missing = {}
    for split, rows in splits.items():
        ids = {row["image_id"] for row in rows if row.get("image_id")}
        missing[split] = sum(not safe_image_path(images, image_id).exists() for image_id in ids)
    return missing


def is_own_output(folder: Path) -> bool:
    """A folder prepare may replace: one holding a manifest prepare wrote (or an empty one)."""
    if not folder.is_dir():
        return False
    if not any(folder.iterdir()):
        return True
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and {"dataset", "mmbench_version", "counts"} <= set(manifest)


def check_out(out: Path, raw: Path, images: Path | None) -> None:
    """Never destroy a user's files: --out must be new, empty, or an earlier prepare's output, and must
    not be (or contain, or sit inside) the raw or images folder."""
    target = out.resolve()
    for option, source in (("--raw", raw), ("--images", images)):
        if source is None or not source.exists():
            continue
        source = source.resolve()
        if target == source or target.is_relative_to(source) or source.is_relative_to(target):
            raise DataError(f"{out}: --out overlaps {option} {source}; prepare writes its output elsewhere")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: --out exists and is not a folder; prepare writes only into a folder it created")
    if out.exists() and not is_own_output(out):
        raise DataError(f"{out}: --out holds files prepare did not write (no {MANIFEST} of an earlier prepare); "
                        "give a new or empty folder")


def load_prepared(name: str, synthetic: bool = False, root: Path | None = None, auto_synthetic: bool = True):
    """The prepared DatasetDict and its manifest; synthetic data is prepared on first use."""
    from datasets import load_from_disk

    _quiet_datasets()
    path = prepared_dir(name, synthetic, root)
    finish_interrupted(path)
    if not (path / MANIFEST).exists():
        if synthetic and auto_synthetic:
            prepare(name, synthetic=True, out=path)
        else:
            raise DataError(f"{path}: {name} is not prepared; run `mmbench prepare {name} --raw DIR` first "
                            f"(raw files: {get_dataset(name).source})")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        return load_from_disk(str(path / "dataset")), manifest
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: prepared data is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                        f"re-run `mmbench prepare {name}`") from None
