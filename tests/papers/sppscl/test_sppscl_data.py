"""CLMLF/HFM readers on the real upstream files and on synthetic data in the same format, and the
frozen-feature cache: keying, invalidation, crash safety, equality with live features."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL as REAL_DATA
import torch

from mmbench.data.feature_cache import FeatureCache
from mmbench.data.formats import clmlf
from mmbench.data.prepare import prepare
from mmbench.errors import DataError

# the real upstream files live in ../shared beside the checkout (skipped when absent)
REAL = REAL_DATA
needs_real = pytest.mark.skipif(not (REAL / "CLMLF").is_dir(), reason="real CLMLF files not available")


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("MMBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MMBENCH_RUNS", str(tmp_path / "runs"))
    torch.set_num_threads(1)


@needs_real
def test_real_mvsa_single_published_counts(tmp_path):
    manifest = prepare("mvsa-single", raw=REAL / "CLMLF/dataset/data/MVSA-single", out=tmp_path / "p")
    assert manifest["counts"] == {"train": 3611, "dev": 450, "test": 450}
    assert manifest["label_counts"]["test"] == [268, 47, 135] and manifest["count_check"] == "ok"


@needs_real
def test_real_hfm_raw_release_equals_clmlf_split(tmp_path):
    from datasets import load_from_disk

    json_manifest = prepare("hfm", raw=REAL / "CLMLF/dataset/data/HFM", out=tmp_path / "json")
    raw_manifest = prepare("hfm", raw=REAL / "headacheboy", out=tmp_path / "raw")
    assert json_manifest["counts"] == raw_manifest["counts"] == {"train": 19816, "dev": 2410, "test": 2409}
    assert raw_manifest["label_counts"] == {"train": [11174, 8642], "dev": [1451, 959], "test": [1450, 959]}
    assert sorted(raw_manifest["raw_files"]) == ["text/test2.txt", "text/train.txt", "text/valid2.txt"]
    a, b = load_from_disk(str(tmp_path / "json/dataset")), load_from_disk(str(tmp_path / "raw/dataset"))
    for split in ("train", "dev", "test"):
        assert a[split].to_list() == b[split].to_list()  # same ids, texts, labels, order


def test_hfm_raw_reader_filter_and_last_label(tmp_path):
    rows = [{"id": "1", "text": "so funny # lol", "label": 1}, {"id": "2", "text": "what a joke", "label": 0},
            {"id": "3", "text": "it's 'quoted' <url>", "label": 1}, {"id": "4", "text": "plain text", "label": 0}]
    (tmp_path / "text").mkdir()
    clmlf.write_hfm_raw(tmp_path / "text/train.txt", rows, extra_label=False)
    clmlf.write_hfm_raw(tmp_path / "text/valid2.txt", rows, extra_label=True)
    train, _ = clmlf._hfm_reader(tmp_path, "train")
    dev, _ = clmlf._hfm_reader(tmp_path, "dev")
    assert [r["id"] for r in train] == ["1", "4"]  # 'joke' and '<url>' posts dropped from train only
    assert [(r["id"], r["label"], r["text"]) for r in dev] == [(r["id"], r["label"], r["text"]) for r in rows]


def test_bad_input_names_file_and_location(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps([{"id": "1", "text": "a", "emotion_label": 0},
                                                     {"id": "2", "text": "b", "emotion_label": 5}]))
    with pytest.raises(DataError, match=r"train.json:\[1\].emotion_label: label must be"):
        clmlf._mvsa_reader(tmp_path, "train")
    (tmp_path / "text").mkdir()
    (tmp_path / "text/train.txt").write_bytes(b"['1', 'ok', 0]\r\n__import__('os')\r\n")
    with pytest.raises(DataError, match=r"train.txt:2: not a Python literal"):
        clmlf.read_hfm_raw(tmp_path / "text/train.txt", True)


@pytest.mark.parametrize("name,n_labels", [("mvsa-multiple", 3), ("hfm", 2)])
def test_synthetic_written_in_upstream_layout(tmp_path, name, n_labels):
    manifest = prepare(name, synthetic=True, out=tmp_path / "p")
    raw = Path(manifest["raw_dir"])
    expected = {"train.json", "valid.json", "test.json"} if name == "hfm" else {"train.json", "dev.json", "test.json"}
    folder = raw if name == "hfm" else raw / clmlf.FOLD
    assert {p.name for p in folder.glob("*.json")} == expected
    assert manifest["missing_images"] == {"train": 0, "dev": 0, "test": 0}
    assert all(len(c) == n_labels and min(c) > 0 for c in manifest["label_counts"].values())


# -- feature cache ---------------------------------------------------------------------------------
def _session(overrides=()):
    from mmbench.engine.trainer import build_session
    from mmbench.recipes.loader import resolve

    return build_session(resolve("sppscl/mvsa-single", ["model.cache_dtype=float32", *overrides], smoke=True), seed=0)


def test_cached_features_equal_live_features_and_reuse():
    session = _session()
    method = session.method
    dirs = sorted(p for p in (Path(FeatureCache({}, "x").dir.parents[1])).glob("sppscl-*/*") if p.is_dir())
    assert len(dirs) == 6  # text + image for 3 splits
    examples = method.examples["dev"][:5]
    cached = method.collate(examples, "dev")["features"]
    method.config.feature_cache = False
    live = method.extractor(method.collate(examples, "dev"))
    method.config.feature_cache = True
    assert torch.allclose(cached["cls"], live["cls"], atol=1e-5)
    n = int(cached["token_mask"].shape[1])
    assert torch.equal(cached["token_mask"], live["token_mask"][:, :n])
    assert torch.allclose(cached["tokens"] * cached["token_mask"][None, ..., None].transpose(0, 1),
                          live["tokens"][:, :, :n] * live["token_mask"][:, None, :n, None], atol=1e-5)
    assert torch.allclose(cached["image_map"], live["image_map"], atol=1e-5)
    # same key again: nothing is rebuilt (the cache folders keep their files)
    stamps = {d: (d / "meta.json").stat().st_mtime_ns for d in dirs}
    _session()
    assert {d: (d / "meta.json").stat().st_mtime_ns for d in dirs} == stamps


def test_cache_key_change_makes_new_cache():
    _session()
    root = Path(FeatureCache({}, "x").dir.parents[1])
    before = {p.name for p in (root / "sppscl-image").iterdir()}
    _session(["model.image_crop=24", "model.image_resize=28"])
    after = {p.name for p in (root / "sppscl-image").iterdir()}
    assert len(after - before) == 3 and before < after  # a new image cache per split, old ones untouched
    text = {p.name for p in (root / "sppscl-text").iterdir()}
    assert len(text) == 3  # text features did not change


def test_crash_during_build_leaves_no_readable_cache():
    cache = FeatureCache({"test": "crash"}, name="sppscl-text")

    def batches():
        yield 0, {"states": np.ones((2, 1, 3), dtype=np.float32)}
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.build(4, {"states": ((1, 3), "float32")}, batches())
    assert not cache.complete and not cache.dir.exists()
    assert not list(cache.dir.parent.glob(".*tmp*"))
    with pytest.raises(DataError, match="not complete"):
        cache.open()


def test_missing_weights_and_images_give_one_clear_error(tmp_path):
    from mmbench.errors import WeightsNotFound
    from mmbench.papers.sppscl.features import load_image_encoder, load_image

    with pytest.raises(WeightsNotFound, match="image_weights"):
        load_image_encoder("resnet50", str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsNotFound, match="config.json missing"):
        load_image_encoder(str(tmp_path / "no-vit-here"))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match="bad.jpg: cannot decode image"):
        load_image(tmp_path, "bad.jpg", "error", "error")
    assert load_image(tmp_path, "bad.jpg", "error", "blank") is None  # blanked and counted by the cache (`ok` = 0)
    assert load_image(tmp_path, "gone.jpg", "blank", "error") is None
    with pytest.raises(DataError, match="missing"):
        load_image(tmp_path, "gone.jpg", "error", "error")
