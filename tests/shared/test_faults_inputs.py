"""Bad raw input for every reader and recipe file: a table of mutations × readers (issue 11).

Each case copies a synthetic raw folder in the exact upstream format, breaks one file, runs
`mmbench prepare` (or `mmbench show` for a recipe file) in-process, and asserts: exit code 2, stderr
exactly one line naming the file and the line or key at fault, the output folder byte-for-byte as
before (nothing half-written) and the raw folder untouched. A few mutations a reader must accept
(CRLF line ends, a BOM in a YAML recipe) assert exit 0 and the same rows as the original instead.

Cases (counted by `test_the_table_has_the_documented_size`): generic text mutations 9 × 5 text
readers (TomBERT tsv, TomBERT txt, CLMLF JSON, HFM raw txt, SCAN captions) = 45; recipe YAML 8;
TomBERT tsv 11, TomBERT txt 7, CLMLF JSON 14, HFM raw 8, SCAN captions 4, SCAN features 12,
ITM pickle 14, ITM region npz 8 — 131 in all.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from typer.testing import CliRunner

from mmbench.cli import app

runner = CliRunner()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder below `folder` with its content hash: 'byte-for-byte as before'."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


def assert_one_line_error(result, *parts: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


# -- mutations -----------------------------------------------------------------------------------------
def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")


def edit_line(number: int, edit: Callable[[str], str]):
    def mutate(path: Path) -> None:
        lines = lines_of(path)
        lines[number - 1] = edit(lines[number - 1])
        path.write_text("\n".join(lines), encoding="utf-8")
    return mutate


def set_bytes(data: bytes):
    return lambda path: path.write_bytes(data)


def to_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "inside").write_text("x")


def latin1_at_line_3(path: Path) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2][:5] + "é".encode("latin-1") + lines[2][5:]
    path.write_bytes(b"\n".join(lines))


def nul_at_line_2(path: Path) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1][:3] + b"\x00" + lines[1][3:]
    path.write_bytes(b"\n".join(lines))


def garbage(path: Path) -> None:
    path.write_bytes(bytes([0xFF, 0xFE]) + random.Random(0).randbytes(300))


def truncate_mid(path: Path) -> None:
    """Cut the file inside a line: k whole lines (k = 1 mod 4, so a TomBERT txt block is cut after its
    first line) and half of the next one."""
    lines = path.read_bytes().split(b"\n")
    keep = (int(len(lines) * 0.6) // 4) * 4 + 1
    path.write_bytes(b"\n".join(lines[:keep]) + b"\n" + lines[keep][: max(1, len(lines[keep]) // 2)])


def bom(path: Path) -> None:
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())


def crlf(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


def lf(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))


GENERIC = {  # mutation → (function, the part of the message after the file name, or None: the file name only)
    "latin1": (latin1_at_line_3, ":3: not UTF-8"),
    "bom": (bom, ":1: starts with a UTF-8 byte-order mark"),
    "nul": (nul_at_line_2, ":2: NUL byte"),
    "empty": (set_bytes(b""), ": empty"),
    "blank": (set_bytes(b"\n \n\t\n"), ": empty"),
    "folder": (to_folder, ": is a folder"),
    "missing": (lambda p: p.unlink(), None),
    "garbage": (garbage, None),
    "truncated": (truncate_mid, None),
}


@dataclass(frozen=True)
class Form:
    dataset: str
    file: str          # the file the mutations break, relative to the raw folder
    images: bool = False


FORMS = {
    "tombert-tsv": Form("twitter15", "train.tsv"),
    "tombert-txt": Form("twitter15", "train.txt"),
    "clmlf-json": Form("mvsa-single", "10-flod-1/train.json"),
    "hfm-raw": Form("hfm", "text/train.txt"),
    "scan-caps": Form("flickr30k", "train_caps.txt"),
    "scan-ims": Form("flickr30k", "train_ims.npy"),
    "itm-pkl": Form("itm-twitter15", "train.pkl"),
    "itm-npz": Form("itm-twitter15", "images/syn_22_0.jpg.npz", images=True),
}
TEXT_FORMS = ("tombert-tsv", "tombert-txt", "clmlf-json", "hfm-raw", "scan-caps")


def json_edit(edit: Callable[[list], object]):
    def mutate(path: Path) -> None:
        items = json.loads(path.read_text(encoding="utf-8"))
        edit(items)
        path.write_text(json.dumps(items, indent=2), encoding="utf-8")
    return mutate


def item0(key, value):
    return json_edit(lambda items: items[0].__setitem__(key, value))


def pkl_edit(edit: Callable[[dict], object], replace: bool = False):
    def mutate(path: Path) -> None:
        data = pickle.loads(path.read_bytes())
        result = edit(data)
        path.write_bytes(pickle.dumps(result if replace else data, protocol=2))
    return mutate


def pkl_field(field, value):
    return pkl_edit(lambda data: data["1"].__setitem__(field, value))


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/mmbench-issue11-payload-ran")


def npy_save(make: Callable[[np.ndarray], np.ndarray], **kw):
    def mutate(path: Path) -> None:
        array = np.load(path)
        np.save(path, make(array), **kw)
    return mutate


def with_nan(value):
    def make(array):
        array = array.copy()
        array[3, 1, 2] = value
        return array
    return make


def npz_edit(**changes):
    """The first image's npz at the real size (2048 × 100: prepare checks ITM's real shape), then changed."""
    def mutate(path: Path) -> None:
        data = {"x": np.zeros((2048, 100), np.float32), "bbox": np.tile(np.array([0, 0, 10, 10], np.float32), (100, 1)),
                "num_bbox": np.array(100), "image_h": np.array(50), "image_w": np.array(60)}
        for key, value in changes.items():
            if value is None:
                data.pop(key)
            else:
                data[key] = value(data[key]) if callable(value) else value
        path.unlink()
        with open(path, "wb") as handle:
            np.savez(handle, **data)
    return mutate


def tsv_dup_index(path):
    lines = lines_of(path)
    lines[3] = lines[2].split("\t")[0] + "\t" + lines[3].split("\t", 1)[1]
    path.write_text("\n".join(lines), encoding="utf-8")


def txt_blank_inside(path):
    lines = lines_of(path)
    path.write_text("\n".join(lines[:8] + [""] + lines[8:]), encoding="utf-8")


def hfm_dup(path):
    lines = path.read_bytes().split(b"\r\n")
    lines[1] = lines[0]
    path.write_bytes(b"\r\n".join(lines))


def hfm_line2(text):
    def mutate(path):
        lines = path.read_bytes().split(b"\r\n")
        lines[1] = text.encode()
        path.write_bytes(b"\r\n".join(lines))
    return mutate


SPECIFIC = [  # (form, name, mutation, expected message part); expected None = must be accepted
    ("tombert-tsv", "no-header", edit_line(1, lambda line: "1\t0\tx.jpg\t$T$ y\tz"), ":1:"),
    ("tombert-tsv", "label-7", edit_line(3, lambda line: "\t".join([line.split("\t")[0], "7", *line.split("\t")[2:]])), ":3: label"),
    ("tombert-tsv", "label-1.0", edit_line(3, lambda line: "\t".join([line.split("\t")[0], "1.0", *line.split("\t")[2:]])), ":3: label"),
    ("tombert-tsv", "label-nan", edit_line(3, lambda line: "\t".join([line.split("\t")[0], "nan", *line.split("\t")[2:]])), ":3: label"),
    ("tombert-tsv", "four-fields", edit_line(3, lambda line: "\t".join(line.split("\t")[:4])), ":3: expected 5"),
    ("tombert-tsv", "no-placeholder", edit_line(3, lambda line: line.replace("$T$", "it")), ":3: sentence"),
    ("tombert-tsv", "two-placeholders", edit_line(3, lambda line: line.replace("$T$", "$T$ $T$")), ":3: sentence"),
    ("tombert-tsv", "empty-target", edit_line(3, lambda line: "\t".join([*line.split("\t")[:4], " "])), ":3: empty target"),
    ("tombert-tsv", "duplicate-index", tsv_dup_index, ":4: duplicate index"),
    ("tombert-tsv", "header-only", lambda p: p.write_text(lines_of(p)[0] + "\n", encoding="utf-8"), ": no examples"),
    ("tombert-tsv", "crlf", crlf, None),
    ("tombert-txt", "blank-line-inside", txt_blank_inside, ":9: blank line inside the data"),
    ("tombert-txt", "polarity-2", edit_line(3, lambda line: "2"), ":3: polarity"),
    ("tombert-txt", "polarity-nan", edit_line(3, lambda line: "nan"), ":3: polarity"),
    ("tombert-txt", "no-placeholder", edit_line(1, lambda line: line.replace("$T$", "it")), ":1: sentence"),
    ("tombert-txt", "truncated-block", lambda p: p.write_text("\n".join(lines_of(p)[:6]) + "\n", encoding="utf-8"), ":5: truncated block"),
    ("tombert-txt", "crlf", crlf, None),
    ("tombert-txt", "trailing-blank-lines", lambda p: p.write_bytes(p.read_bytes() + b"\n\n\n"), None),
    ("clmlf-json", "not-a-list", set_bytes(b'{"id": "1"}'), ": expected a non-empty JSON list"),
    ("clmlf-json", "empty-list", set_bytes(b"[]"), ": expected a non-empty JSON list"),
    ("clmlf-json", "missing-text", json_edit(lambda items: items[0].pop("text")), ":[0]: expected an object"),
    ("clmlf-json", "label-3", item0("emotion_label", 3), ":[0].emotion_label:"),
    ("clmlf-json", "label-nan", lambda p: p.write_text(p.read_text().replace('"emotion_label": 0', '"emotion_label": NaN', 1)), ".emotion_label:"),
    ("clmlf-json", "label-true", item0("emotion_label", True), ":[0].emotion_label:"),
    ("clmlf-json", "label-string", item0("emotion_label", "1"), ":[0].emotion_label:"),
    ("clmlf-json", "duplicate-id", json_edit(lambda items: items[1].__setitem__("id", items[0]["id"])), ":[1].id: duplicate id"),
    ("clmlf-json", "id-with-slash", item0("id", "../etc"), ":[0].id:"),
    ("clmlf-json", "id-with-nul", item0("id", "12\u00003"), ":[0].id:"),
    ("clmlf-json", "empty-id", item0("id", ""), ":[0].id:"),
    ("clmlf-json", "text-number", item0("text", 5), ":[0].text:"),
    ("clmlf-json", "trailing-comma", lambda p: p.write_text(p.read_text().rstrip().rstrip("]") + ",]"), ": invalid JSON"),
    ("clmlf-json", "crlf", crlf, None),
    ("hfm-raw", "not-a-literal", hfm_line2("['1', 'text' , 1"), ":2: not a Python literal"),
    ("hfm-raw", "label-5", hfm_line2("['901', 'some text', 5]"), ":2: label"),
    ("hfm-raw", "label-float", hfm_line2("['901', 'some text', 1.5]"), ":2: label"),
    ("hfm-raw", "duplicate-id", hfm_dup, ":2: duplicate id"),
    ("hfm-raw", "id-with-slash", hfm_line2("['a/b', 'some text', 1]"), ":2: id"),
    ("hfm-raw", "a-dict", hfm_line2("{'id': 1}"), ":2: expected"),
    ("hfm-raw", "short-list", hfm_line2("['901', 'text']"), ":2: expected"),
    ("hfm-raw", "lf", lf, None),
    ("scan-caps", "empty-line-inside", edit_line(3, lambda line: ""), ":3: empty caption"),
    ("scan-caps", "one-caption-missing", lambda p: p.write_text("\n".join(lines_of(p)[1:]), encoding="utf-8"), "not a multiple of 5"),
    ("scan-caps", "five-extra", lambda p: p.write_text(p.read_text() + "a b .\n" * 5, encoding="utf-8"), "image rows"),
    ("scan-caps", "crlf", crlf, None),
    ("scan-ims", "empty", set_bytes(b""), ": empty file"),
    ("scan-ims", "garbage", garbage, ": not a .npy"),
    ("scan-ims", "two-dims", npy_save(lambda a: a[:, 0, :]), ": expected float32"),
    ("scan-ims", "float64", npy_save(lambda a: a.astype(np.float64)), ": expected float32"),
    ("scan-ims", "zero-regions", npy_save(lambda a: a[:, :0, :]), ": expected float32"),
    ("scan-ims", "nan", npy_save(with_nan(np.nan)), ":[3]: non-finite"),
    ("scan-ims", "inf", npy_save(with_nan(np.inf)), ":[3]: non-finite"),
    ("scan-ims", "row-count", npy_save(lambda a: a[:-1]), "image rows"),
    ("scan-ims", "object-array", npy_save(lambda a: np.array([{"a": 1}], dtype=object), allow_pickle=True), ": not a .npy"),
    ("scan-ims", "truncated", lambda p: p.write_bytes(p.read_bytes()[:2000]), ": not a .npy"),
    ("scan-ims", "folder", to_folder, ": is a folder"),
    ("scan-ims", "missing", lambda p: p.unlink(), ": region features missing"),
    ("itm-pkl", "garbage", garbage, ": not a plain-data pickle"),
    ("itm-pkl", "reduce-payload", pkl_edit(lambda data: data["1"].__setitem__("aspect", Payload())), "refusing to load"),
    ("itm-pkl", "a-list", pkl_edit(lambda data: list(data.values()), replace=True), ": expected a non-empty dict"),
    ("itm-pkl", "empty-dict", set_bytes(pickle.dumps({})), ": expected a non-empty dict"),
    ("itm-pkl", "missing-field", pkl_edit(lambda data: data["1"].pop("sentiment")), ":['1']: missing field"),
    ("itm-pkl", "nul-in-iid", pkl_field("iid", "syn\x00x"), ":['1'].iid:"),
    ("itm-pkl", "slash-in-iid", pkl_field("iid", "../x"), ":['1'].iid:"),
    ("itm-pkl", "sentiment-5", pkl_field("sentiment", "5"), ":['1'].sentiment:"),
    ("itm-pkl", "bad-box", pkl_field("boxes", [(5.0, 5.0, 1.0, 1.0)]), ":['1'].boxes[0]:"),
    ("itm-pkl", "relation-x", pkl_field("relation", "x"), ":['1'].relation:"),
    ("itm-pkl", "no-placeholder", pkl_field("sentence", "no target here"), ":['1'].sentence:"),
    ("itm-pkl", "folder", to_folder, ": cannot read"),
    ("itm-pkl", "empty", set_bytes(b""), ": not a plain-data pickle"),
    ("itm-pkl", "truncated", lambda p: p.write_bytes(p.read_bytes()[:100]), ": not a plain-data pickle"),
    ("itm-npz", "no-x", npz_edit(x=None), ":x: key missing"),
    ("itm-npz", "narrow-x", npz_edit(x=lambda x: x[:64]), ":x: shape [64, 100], expected [2048, 100]"),
    ("itm-npz", "nan", npz_edit(x=lambda x: np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x)), ": non-finite"),
    ("itm-npz", "bbox-shape", npz_edit(bbox=lambda b: b[:, :3]), ":bbox: shape"),
    ("itm-npz", "folder", to_folder, ": not a readable npz"),
    ("itm-npz", "missing", lambda p: p.unlink(), ": region feature file missing"),
    ("itm-npz", "height-0", npz_edit(image_h=np.array(0)), ":image_h/image_w:"),
    ("itm-npz", "object-array", npz_edit(x=lambda x: np.array([{"a": 1}], dtype=object)), ": not a readable npz"),
]

RECIPE_GENERIC = {
    "latin1": (latin1_at_line_3, ":3: not UTF-8"),
    "nul": (nul_at_line_2, ":2: NUL byte"),
    "empty": (set_bytes(b""), ": a recipe must be a mapping"),
    "folder": (to_folder, ": is a folder"),
    "garbage": (garbage, None),
    "unterminated-string": (lambda p: p.write_text(p.read_text() + 'notes: "cut off\n'), ": invalid YAML"),
    "tab-indent": (lambda p: p.write_text(p.read_text().replace("\n  ", "\n\t", 1)), ": invalid YAML"),
    "bom": (bom, "ACCEPT"),
}


# -- raw folders ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raws(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """One synthetic raw folder per form: (raw, images)."""
    from mmbench.data.catalog import get_dataset
    from mmbench.data.formats.clmlf import read_json, write_hfm_raw

    base = tmp_path_factory.mktemp("raws")
    made: dict[str, tuple[Path, Path]] = {}
    for dataset in ("twitter15", "mvsa-single", "hfm", "flickr30k", "itm-twitter15"):
        raw, images = base / dataset / "raw", base / dataset / "images"
        get_dataset(dataset).write_synthetic(raw, images)
        made[dataset] = (raw, images)
    txt = base / "twitter15-txt"
    shutil.copytree(made["twitter15"][0], txt)
    for tsv in txt.glob("*.tsv"):
        tsv.unlink()
    made["twitter15-txt"] = (txt, made["twitter15"][1])
    for other in made["twitter15"][0].glob("*.txt"):  # the tsv form alone (a missing tsv would fall back to txt)
        other.unlink()
    hfm_raw = base / "hfm-raw"
    for split, name in (("train", "train.txt"), ("dev", "valid2.txt"), ("test", "test2.txt")):
        rows = read_json(made["hfm"][0] / ("valid.json" if split == "dev" else f"{split}.json"), 2)
        (hfm_raw / "text").mkdir(parents=True, exist_ok=True)
        write_hfm_raw(hfm_raw / "text" / name, rows, extra_label=split != "train")
    made["hfm-raw"] = (hfm_raw, made["hfm"][1])
    return made


def _raw_key(form: str) -> str:
    return {"tombert-txt": "twitter15-txt", "hfm-raw": "hfm-raw"}.get(form, FORMS[form].dataset)


def _prepare(form: str, raws, tmp_path: Path, mutate) -> tuple[object, Path, Path, Path]:
    spec = FORMS[form]
    source_raw, source_images = raws[_raw_key(form)]
    raw = tmp_path / "raw"
    shutil.copytree(source_raw, raw, ignore=shutil.ignore_patterns("images"))
    args = ["prepare", spec.dataset, "--raw", str(raw)]
    if spec.images:
        shutil.copytree(source_images, raw / "images")
        args += ["--images", str(raw / "images")]
    target = raw / spec.file
    if mutate is not None:
        mutate(target)
    before = snapshot(raw)
    out_root = tmp_path / "out"
    out_root.mkdir()
    result = runner.invoke(app, [*args, "--out", str(out_root / "prepared"), "--allow-count-mismatch"])
    assert snapshot(raw) == before, "prepare changed the raw folder"
    return result, target, out_root, raw


CASES = ([pytest.param(form, name, fn, part, id=f"{form}-{name}") for form in TEXT_FORMS for name, (fn, part) in GENERIC.items()]
         + [pytest.param(form, name, fn, part, id=f"{form}-{name}") for form, name, fn, part in SPECIFIC])


@pytest.mark.parametrize("form,name,mutate,part", CASES)
def test_bad_raw_input_is_one_line_and_writes_nothing(form, name, mutate, part, raws, tmp_path, mm_env):
    MARKER.unlink(missing_ok=True)
    result, target, out_root, _ = _prepare(form, raws, tmp_path, mutate)
    if part is None and name in {p[1] for p in SPECIFIC if p[0] == form}:  # a mutation the reader must accept
        assert result.exit_code == 0, result.output
        reference, *_ = _prepare(form, raws, tmp_path / "reference", None)
        assert _rows(out_root / "prepared") == _rows(tmp_path / "reference" / "out" / "prepared")
        return
    name_in_message = target.name if name != "missing" or form != "tombert-tsv" else "train"
    assert_one_line_error(result, name_in_message, *([part] if part else []))
    assert snapshot(out_root) == {}, "prepare left files in the output folder"
    assert not MARKER.exists(), "a pickle payload ran"


def _rows(prepared: Path) -> dict:
    from datasets import load_from_disk

    data = load_from_disk(str(prepared / "dataset"))
    return {split: data[split].to_list() for split in data}


# -- recipe files ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(RECIPE_GENERIC))
def test_bad_recipe_file_is_one_line(name, tmp_path, mm_env):
    from mmbench.paths import recipe_files

    source = recipe_files()["baselines/twitter15-bert"].path
    shutil.copy(source, tmp_path / "mine.yaml")
    shutil.copy(source.parent / "_tmsc-text.yaml", tmp_path / "_tmsc-text.yaml")
    target = tmp_path / "mine.yaml"
    mutate, part = RECIPE_GENERIC[name]
    mutate(target)
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["show", str(target)])
    if part == "ACCEPT":
        assert result.exit_code == 0, result.output
    else:
        assert_one_line_error(result, "mine.yaml", *([part] if part else []))
    assert snapshot(tmp_path) == before


def test_the_table_has_the_documented_size():
    assert len(TEXT_FORMS) * len(GENERIC) == 45 and len(RECIPE_GENERIC) == 8
    per_form = {form: sum(1 for p in SPECIFIC if p[0] == form) for form in FORMS}
    assert per_form == {"tombert-tsv": 11, "tombert-txt": 7, "clmlf-json": 14, "hfm-raw": 8, "scan-caps": 4,
                        "scan-ims": 12, "itm-pkl": 14, "itm-npz": 8}  # (generic garbage for npz: itm-npz-object-array)
    assert len(CASES) + len(RECIPE_GENERIC) == 131
