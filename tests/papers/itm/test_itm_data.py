"""ITM data: restricted unpickler, pkl reader errors, published counts on the real files, synthetic
data through the same reader, and the region-feature store (shapes, lookups, bad files)."""

from __future__ import annotations

import collections
import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL as REAL_DATA

from mmbench.papers.itm import data as itm_pkl
from mmbench.papers.itm.regions import RegionStore, build_region_store, write_region_file
from mmbench.errors import DataError

# the real upstream files live in ../shared beside the checkout (skipped when absent)
REAL = REAL_DATA
REAL_VG = REAL / "ITM/data/Image_Target_Matching"
REAL_T15 = REAL / "ITM/data/Sentiment_Analysis/twitter2015"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("MMBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MMBENCH_RUNS", str(tmp_path / "runs"))
    return tmp_path


def _example(**changes):
    row = {"iid": "img1", "sentence": "$T$ is great", "aspect": "Bob", "sentiment": "2", "relation": "1", "boxes": [(1, 2, 30, 40)]}
    row.update(changes)
    return row


def _dump(path: Path, data) -> Path:
    path.write_bytes(pickle.dumps(data, protocol=2))
    return path


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_restricted_unpickler_accepts_plain_data_and_refuses_classes(tmp_path):
    plain = {"1": _example(), "2": _example(relation=None, boxes=[]), "x": {1.5, 2.5}, "b": (True, None, 3)}
    assert itm_pkl.load_plain_pickle(_dump(tmp_path / "ok.pkl", plain)) == plain
    (tmp_path / "ok4.pkl").write_bytes(pickle.dumps(plain, protocol=4))
    assert itm_pkl.load_plain_pickle(tmp_path / "ok4.pkl") == plain
    for bad in (collections.OrderedDict(a=1), _Evil(), np.zeros(2)):
        with pytest.raises(DataError, match=r"bad\.pkl: not a plain-data pickle \(refusing"):
            itm_pkl.load_plain_pickle(_dump(tmp_path / "bad.pkl", {"1": bad}))
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps(plain)[:20])
    with pytest.raises(DataError, match="cut.pkl"):
        itm_pkl.load_plain_pickle(tmp_path / "cut.pkl")


@pytest.mark.parametrize("change, where", [
    ({"sentiment": "3"}, r"\['7'\]\.sentiment"),
    ({"relation": "5"}, r"\['7'\]\.relation"),
    ({"sentence": "no placeholder"}, r"\['7'\]\.sentence"),
    ({"boxes": [(5, 5, 1, 1)]}, r"\['7'\]\.boxes\[0\]"),
    ({"aspect": ""}, r"\['7'\]\.aspect"),
])
def test_reader_names_file_and_key(tmp_path, change, where):
    path = _dump(tmp_path / "VG_train.pkl", {"7": _example(**change)})
    with pytest.raises(DataError, match=rf"VG_train\.pkl:{where}"):
        itm_pkl.read_vg_split(tmp_path, "train")
    path.write_bytes(pickle.dumps({"7": {"iid": "x"}}))
    with pytest.raises(DataError, match="missing field"):
        itm_pkl.read_vg_split(tmp_path, "train")


def test_rows_map_relation_two_to_related(tmp_path):
    _dump(tmp_path / "VG_dev.pkl", {"1": _example(relation="2"), "2": _example(relation="0", boxes=[]), "3": _example(relation=None)})
    rows, files = itm_pkl.read_vg_split(tmp_path, "dev")
    assert [r["relation"] for r in rows] == [1, 0, -1] and [r["relation_raw"] for r in rows] == [2, 0, -1]
    assert rows[0]["boxes"] == [[1.0, 2.0, 30.0, 40.0]] and rows[0]["label"] == 2 and rows[0]["target"] == "Bob"
    assert files == [tmp_path / "VG_dev.pkl"]


@pytest.mark.skipif(not REAL_VG.exists(), reason="real ITM files not present")
def test_real_files_give_published_counts(env):
    from mmbench.data.prepare import prepare

    manifest = prepare("itm-vg", raw=REAL_VG)
    assert manifest["counts"] == {"train": 1176, "dev": 588, "test": 588} and manifest["count_check"] == "ok"
    stats = manifest["extra"]["relevance"]
    for split, (targets, images, related, unrelated) in itm_pkl.VG_TABLE1.items():  # paper Table 1
        assert (stats[split]["targets"], stats[split]["images"], stats[split]["related"], stats[split]["unrelated"]) == (targets, images, related, unrelated)
    assert manifest["extra"]["regions"] is None  # no features here: rows prepared, store absent
    t15 = prepare("itm-twitter15", raw=REAL_T15)
    assert t15["counts"] == {"train": 3179, "dev": 1122, "test": 1037} and t15["label_counts"]["train"] == [368, 1883, 928]


@pytest.mark.skipif(not (REAL / "TomBERT/absa_data/twitter2015").exists(), reason="real TomBERT files not present")
def test_itm_pkl_is_tomberts_twitter15():
    from mmbench.data.formats.tombert import read_split

    for split in ("train", "test"):
        ours, _ = itm_pkl.read_tmsc_split(REAL_T15, split)
        theirs, _ = read_split(REAL / "TomBERT/absa_data/twitter2015", split)
        assert [(r["sentence"], r["target"], r["label"], r["iid"] + ".jpg") for r in ours] == \
               [(r["sentence"], r["target"], r["label"], r["image_id"]) for r in theirs]


def test_region_store_matches_npz_and_rejects_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    feats = {iid: rng.normal(size=(5, 3)).astype(np.float32) for iid in ("a", "b")}
    boxes = rng.uniform(0, 50, size=(5, 4)).astype(np.float32)
    for iid, f in feats.items():
        write_region_file(tmp_path / "feat" / f"{iid}.jpg.npz", f, boxes, (60, 80))
    with np.load(tmp_path / "feat" / "a.jpg.npz") as npz:
        assert npz["x"].shape == (3, 5)  # ITM's [dim, regions] layout on disk
    info = build_region_store(tmp_path / "feat", ["b", "a", "a"], tmp_path / "out", feature_dim=3, num_regions=5)
    assert info["images"] == 2
    store = RegionStore(tmp_path / "out")
    assert isinstance(store.features, np.memmap)
    np.testing.assert_array_equal(store.features[store.index("b")], feats["b"])
    np.testing.assert_array_equal(store.boxes[store.index("a")], boxes)
    assert store.sizes[store.index("a")].tolist() == [60, 80]
    with pytest.raises(DataError, match="'zz' has no region features"):
        store.index("zz")
    with pytest.raises(DataError, match=r"c\.jpg\.npz: region feature file missing"):
        build_region_store(tmp_path / "feat", ["a", "c"], tmp_path / "out2", 3, 5)
    with pytest.raises(DataError, match=r"a\.jpg\.npz:x: shape \[3, 5\], expected \[2048, 100\]"):
        build_region_store(tmp_path / "feat", ["a"], tmp_path / "out3", 2048, 100)
    np.savez(tmp_path / "feat" / "d.jpg.npz", x=np.zeros((3, 5)), bbox=np.zeros((4, 4)), image_h=1, image_w=1)
    with pytest.raises(DataError, match=r"d\.jpg\.npz:bbox: shape \[4, 4\]"):
        build_region_store(tmp_path / "feat", ["d"], tmp_path / "out4", 3, 5)
    (tmp_path / "feat" / "e.jpg.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"e\.jpg\.npz: not a readable npz"):
        build_region_store(tmp_path / "feat", ["e"], tmp_path / "out5", 3, 5)
    with pytest.raises(DataError, match="no region features were indexed"):
        RegionStore(tmp_path / "nothing")


def test_synthetic_data_goes_through_the_same_reader(env):
    from mmbench.data.prepare import load_prepared, prepared_dir

    data, manifest = load_prepared("itm-vg", synthetic=True)
    raw = Path(manifest["raw_dir"])
    assert sorted(p.name for p in raw.glob("*.pkl")) == ["VG_dev.pkl", "VG_test.pkl", "VG_train.pkl"]
    rows, _ = itm_pkl.read_vg_split(raw, "train")
    assert [r["id"] for r in rows] == list(data["train"]["id"])
    stats = manifest["extra"]["relevance"]["train"]
    assert 0 < stats["related"] < stats["targets"] and manifest["extra"]["regions"]["num_regions"] == 100
    store = RegionStore(prepared_dir("itm-vg", True))
    # a related target's GT box is covered by proposals with IoU > 0.5 (the synthetic alignment signal)
    from mmbench.papers.itm.metrics import box_iou

    related = [r for r in rows if r["relation"] == 1]
    best = [box_iou(store.boxes[store.index(r["iid"])], np.asarray(r["boxes"][:1])).max() for r in related]
    assert min(best) > 0.5
    tmsc, _ = load_prepared("itm-twitter15", synthetic=True)
    assert set(tmsc["train"]["relation"]) == {-1}
