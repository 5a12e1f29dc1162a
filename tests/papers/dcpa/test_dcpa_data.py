"""DCPA data: SCAN's precomp layout (captions + memory-mapped region features) read by the same code for
real and synthetic files; the real Flickr30K dev/test captions; one-line errors naming file and line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL as REAL_DATA

from mmbench.data.formats import scan
from mmbench.data.prepare import load_prepared, prepare
from mmbench.errors import DataError

# the real upstream files live in ../shared beside the checkout (skipped when absent)
REAL = REAL_DATA / "SCAN" / "data" / "f30k_precomp"


@pytest.fixture(autouse=True)
def _data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MMBENCH_DATA", str(tmp_path / "data"))


def _features(path: Path, n_images: int, regions: int = 36, dim: int = 4) -> None:
    np.save(path, np.random.default_rng(0).normal(size=(n_images, regions, dim)).astype(np.float32))


def test_read_captions_handles_missing_final_newline_and_rejects_bad_lines(tmp_path):
    path = tmp_path / "test_caps.txt"
    path.write_text("\n".join(f"caption {i}" for i in range(10)))  # no final newline (like SCAN's test file)
    assert scan.read_captions(path) == [f"caption {i}" for i in range(10)]
    path.write_text("\n".join(f"caption {i}" for i in range(10)) + "\n")
    assert len(scan.read_captions(path)) == 10
    path.write_text("a\nb\n\nc\nd\ne\n")
    with pytest.raises(DataError, match=r"test_caps.txt:3: empty caption"):
        scan.read_captions(path)
    path.write_text("a\nb\nc\n")
    with pytest.raises(DataError, match="not a multiple of 5"):
        scan.read_captions(path)


def test_rows_pair_caption_j_with_image_j_div_5(tmp_path):
    (tmp_path / "dev_caps.txt").write_text("\n".join(f"c{i}" for i in range(15)) + "\n")
    rows, files = scan.read_split(tmp_path, "dev")
    assert [r["image"] for r in rows] == [i // 5 for i in range(15)]
    assert rows[7] == {"id": "dev-7", "caption": "c7", "image": 1, "label": 0}
    assert files == [tmp_path / "dev_caps.txt"]


@pytest.mark.skipif(not REAL.exists(), reason="real SCAN captions not available")
def test_prepare_reads_real_flickr30k_test_captions_and_pairs_them_with_features(tmp_path):
    raw = tmp_path / "f30k_precomp"
    raw.mkdir()
    for split in ("dev", "test"):
        shutil.copy(REAL / f"{split}_caps.txt", raw / f"{split}_caps.txt")
    (raw / "train_caps.txt").write_text("\n".join(f"a dog {i}" for i in range(10)) + "\n")
    # no features yet: prepare names the first missing file
    with pytest.raises(DataError, match=r"train_ims\.npy: region features missing"):
        prepare("flickr30k", raw=raw, allow_count_mismatch=True)
    # small stand-in features (the real ones are [N, 36, 2048]); the row count must match the captions
    _features(raw / "train_ims.npy", 2)
    _features(raw / "dev_ims.npy", 1014)
    _features(raw / "test_ims.npy", 999)
    with pytest.raises(DataError, match=r"test_ims\.npy: 999 image rows for 5000 captions"):
        prepare("flickr30k", raw=raw, allow_count_mismatch=True)
    _features(raw / "test_ims.npy", 1000)
    with pytest.raises(DataError, match="train: 10 examples, published 145000"):
        prepare("flickr30k", raw=raw)
    manifest = prepare("flickr30k", raw=raw, allow_count_mismatch=True)
    assert manifest["counts"] == {"train": 10, "dev": 5070, "test": 5000}
    assert "dev" not in manifest["count_check"] and "test" not in manifest["count_check"]  # only train differs
    assert manifest["extra"]["features"]["test"]["shape"] == [1000, 36, 4]
    data, manifest = load_prepared("flickr30k")
    test = data["test"]
    assert test[0]["caption"] == "The man with pierced ears is wearing glasses and an orange hat ."
    assert test[4999]["image"] == 999 and test[5]["image"] == 1
    features = scan.open_features(manifest, "test")
    assert isinstance(features, np.memmap) and features.shape == (1000, 36, 4)


def test_open_features_rejects_changed_file(tmp_path):
    prepare("flickr30k", synthetic=True)
    _, manifest = load_prepared("flickr30k", synthetic=True)
    array = scan.open_features(manifest, "dev")
    assert isinstance(array, np.memmap) and array.shape == (16, 36, scan.SYNTHETIC_DIM)
    path = Path(manifest["extra"]["features"]["dev"]["path"])
    _features(path, 17, dim=scan.SYNTHETIC_DIM)
    with pytest.raises(DataError, match="changed since prepare"):
        scan.open_features(manifest, "dev")


def test_bad_feature_dtype_is_one_line_error(tmp_path):
    path = tmp_path / "dev_ims.npy"
    np.save(path, np.zeros((2, 36, 4), dtype=np.float64))
    with pytest.raises(DataError, match=r"dev_ims.npy: expected float32 \[N, regions, dim\]"):
        scan.load_features(path)


def test_synthetic_coco_has_testall_whose_first_images_are_test():
    manifest = prepare("coco", synthetic=True)
    assert manifest["counts"] == {"train": 240, "dev": 80, "test": 25, "testall": 125}
    data, manifest = load_prepared("coco", synthetic=True)
    assert data["test"]["caption"] == data["testall"]["caption"][:25]
    np.testing.assert_array_equal(scan.open_features(manifest, "test"), scan.open_features(manifest, "testall")[:5])
    assert json.dumps(manifest["label_names"]) == "[]"
