import json
import shutil

import pytest

from mmbench.data.formats.tombert import read_tsv, read_txt
from mmbench.data.images import resolve_image, safe_image_path
from mmbench.data.prepare import load_prepared, prepare
from mmbench.errors import DataError

from conftest import real_path


def test_real_twitter15_counts_and_labels(tmp_path):
    raw = real_path("TomBERT", "absa_data", "twitter2015")
    manifest = prepare("twitter15", raw=raw, out=tmp_path / "t15")
    assert manifest["counts"] == {"train": 3179, "dev": 1122, "test": 1037}
    assert manifest["label_counts"]["train"] == [368, 1883, 928]
    assert manifest["count_check"] == "ok"
    assert set(manifest["raw_files"]) == {"train.tsv", "dev.tsv", "test.tsv"}


def test_real_txt_and_tsv_forms_agree():
    raw = real_path("TomBERT", "absa_data", "twitter2015")
    for split in ("train", "dev", "test"):
        tsv, txt = read_tsv(raw / f"{split}.tsv"), read_txt(raw / f"{split}.txt")
        strip = lambda rows: [(r["sentence"].strip(), r["target"], r["label"], r["image_id"]) for r in rows]
        assert strip(tsv) == strip(txt)


def test_count_mismatch_is_an_error_unless_allowed(tmp_path):
    raw = real_path("TomBERT", "absa_data", "twitter2015")
    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    lines = (copy / "dev.tsv").read_text().splitlines()
    (copy / "dev.tsv").write_text("\n".join(lines[:-5]) + "\n")
    with pytest.raises(DataError, match="dev: 1117 examples, published 1122"):
        prepare("twitter15", raw=copy, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    manifest = prepare("twitter15", raw=copy, out=tmp_path / "out", allow_count_mismatch=True)
    assert manifest["count_check"].startswith("mismatch allowed")


def _raw_copy(tmp_path, synthetic_raw):
    copy = tmp_path / "raw"
    shutil.copytree(synthetic_raw, copy, ignore=shutil.ignore_patterns("images"))
    return copy


@pytest.fixture
def synthetic_raw(mm_env, shared_data_root):
    prepare("twitter15", synthetic=True)
    return shared_data_root / "raw" / "twitter15-synthetic"


def test_synthetic_prepare_round_trip(synthetic_raw, shared_data_root):
    data, manifest = load_prepared("twitter15", synthetic=True)
    assert manifest["synthetic"] and manifest["counts"]["train"] == len(data["train"]) > 200
    assert manifest["missing_images"] == {"train": 0, "dev": 0, "test": 0}
    row = data["train"][0]
    assert "$T$" in row["sentence"] and row["label"] in (0, 1, 2)


def test_malformed_tsv_fails_with_file_and_line(tmp_path, synthetic_raw):
    raw = _raw_copy(tmp_path, synthetic_raw)
    lines = (raw / "dev.tsv").read_text().splitlines()
    lines[3] = "\t".join(lines[3].split("\t")[:3])
    (raw / "dev.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"dev\.tsv:4: expected 5 tab-separated fields, found 3"):
        prepare("twitter15", raw=raw, out=tmp_path / "out", synthetic=False, allow_count_mismatch=True)
    assert not (tmp_path / "out").exists()


def test_bad_label_fails_with_file_and_line(tmp_path, synthetic_raw):
    raw = _raw_copy(tmp_path, synthetic_raw)
    lines = (raw / "train.tsv").read_text().splitlines()
    fields = lines[2].split("\t")
    fields[1] = "7"
    lines[2] = "\t".join(fields)
    (raw / "train.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train\.tsv:3: label must be 0, 1 or 2"):
        read_tsv(raw / "train.tsv")


def test_truncated_txt_fails_with_file_and_line(tmp_path, synthetic_raw):
    raw = _raw_copy(tmp_path, synthetic_raw)
    lines = (raw / "test.txt").read_text().splitlines()
    (raw / "test.txt").write_text("\n".join(lines[:10]) + "\n")  # 2.5 blocks
    with pytest.raises(DataError, match=r"test\.txt:9: truncated block"):
        read_txt(raw / "test.txt")


def test_missing_placeholder_is_rejected(tmp_path, synthetic_raw):
    raw = _raw_copy(tmp_path, synthetic_raw)
    lines = (raw / "dev.txt").read_text().splitlines()
    lines[4] = lines[4].replace("$T$", "X")
    (raw / "dev.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"dev\.txt:5: sentence must contain \$T\$ exactly once, found 0"):
        read_txt(raw / "dev.txt")


def test_image_ids_cannot_escape_the_root_and_missing_follows_policy(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"x")
    (root / "17_06_4705.jpg").write_bytes(b"x")
    for bad in ("../secret.jpg", "/etc/passwd", "sub/../../x.jpg"):
        with pytest.raises(DataError):
            safe_image_path(root, bad)
    assert resolve_image(root, "a.jpg") == (root / "a.jpg").resolve()
    with pytest.raises(DataError, match="missing"):
        resolve_image(root, "b.jpg")
    assert resolve_image(root, "b.jpg", policy="substitute", substitute="17_06_4705.jpg").name == "17_06_4705.jpg"


def test_unprepared_real_dataset_says_how_to_prepare(mm_env):
    with pytest.raises(DataError, match="mmbench prepare twitter17 --raw DIR"):
        load_prepared("twitter17")


def test_reprepare_replaces_whole_output(tmp_path, synthetic_raw):
    out = tmp_path / "out"
    prepare("twitter15", raw=synthetic_raw, out=out, synthetic=True)
    first = json.loads((out / "manifest.json").read_text())
    prepare("twitter15", raw=synthetic_raw, out=out, synthetic=True)
    assert json.loads((out / "manifest.json").read_text())["counts"] == first["counts"]
    assert not list(tmp_path.glob(".out*"))  # no temp or old folders left behind
