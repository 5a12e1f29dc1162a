"""CLMLF's image-text sentiment splits (Link-Li/CLMLF, dataset/data/...), the
splits later image-text sentiment papers evaluate on.

- MVSA-Single / MVSA-Multiple: `10-flod-1/{train,dev,test}.json` (the raw dir may be the dataset
  folder or its `10-flod-1` subfolder); labels 0 = positive, 1 = neutral, 2 = negative.
- HFM (multimodal sarcasm): `{train,valid,test}.json` (`valid` is the dev split; `dev.json` is
  accepted too); labels 0 = not sarcastic, 1 = sarcastic.
  HFM can also be read from its raw release (headacheboy/data-of-multimodal-sarcasm-detection,
  `text/{train,valid2,test2}.txt`): one Python literal list per CRLF line, `['id', 'text', label]`
  (valid2/test2 carry a second label; the LAST element is the label). The authors drop train posts
  whose whitespace tokens include one of `HFM_KEYWORDS`; the result equals CLMLF's JSON exactly.

Every JSON file is a list of {"id": str, "text": str, "emotion_label": int}; the image is `{id}.jpg`.
Rows: {id, text, label, image_id}.
"""

from __future__ import annotations

import ast
import json
import random
from pathlib import Path

import numpy as np

from mmbench.data.catalog import DatasetSpec
from mmbench.data.formats import read_text
from mmbench.errors import DataError, located

MVSA_LABELS = ("positive", "neutral", "negative")
HFM_LABELS = ("not-sarcastic", "sarcastic")
# the HFM authors' train filter (headacheboy loadData): a post containing any of these tokens is dropped
HFM_KEYWORDS = frozenset({"exgag", "sarcasm", "sarcastic", "reposting", "<url>", "joke", "humour", "humor",
                          "jokes", "irony", "ironic"})
HFM_RAW_FILES = {"train": "train.txt", "dev": "valid2.txt", "test": "test2.txt"}
FOLD = "10-flod-1"  # CLMLF's (misspelt) fold folder


def _check_label(path: Path, where, value, n_labels: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n_labels:
        raise DataError(located(path, where, f"label must be an integer in 0..{n_labels - 1}, found {value!r}"))
    return value


def read_json(path: Path, n_labels: int) -> list[dict]:
    try:
        data = json.loads(read_text(path, "CLMLF JSON file"))
    except json.JSONDecodeError as exc:
        raise DataError(located(path, exc.lineno, f"invalid JSON: {exc.msg}")) from None
    if not isinstance(data, list) or not data:
        raise DataError(f"{path}: expected a non-empty JSON list of {{id, text, emotion_label}}")
    rows, seen = [], set()
    for i, item in enumerate(data):
        where = f"[{i}]"
        if not isinstance(item, dict) or not {"id", "text", "emotion_label"} <= set(item):
            raise DataError(located(path, where, "expected an object with keys id, text, emotion_label"))
        sample_id, text = item["id"], item["text"]
        if not isinstance(sample_id, str) or not sample_id or "/" in sample_id or "\\" in sample_id or sample_id.startswith(".") \
                or not sample_id.isprintable():
            raise DataError(located(path, f"{where}.id", f"id must be a non-empty file-name string, found {sample_id!r}"))
        if not isinstance(text, str):
            raise DataError(located(path, f"{where}.text", "text must be a string"))
        if sample_id in seen:
            raise DataError(located(path, f"{where}.id", f"duplicate id {sample_id!r}"))
        seen.add(sample_id)
        label = _check_label(path, f"{where}.emotion_label", item["emotion_label"], n_labels)
        rows.append({"id": sample_id, "text": text, "label": label, "image_id": f"{sample_id}.jpg"})
    return rows


def read_hfm_raw(path: Path, drop_keywords: bool) -> list[dict]:
    """headacheboy's txt: literal lists parsed with ast.literal_eval (never eval)."""
    lines = read_text(path, "HFM text file").split("\n")
    rows, seen = [], {}
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            item = ast.literal_eval(line)
        except (ValueError, SyntaxError) as exc:
            raise DataError(located(path, number, f"not a Python literal list ({type(exc).__name__})")) from None
        if not isinstance(item, list) or len(item) < 3 or not isinstance(item[0], str) or not isinstance(item[1], str):
            raise DataError(located(path, number, "expected ['id', 'text', label, ...]"))
        label = _check_label(path, number, item[-1], 2)  # the LAST element is the label
        if not item[0] or "/" in item[0] or "\\" in item[0] or item[0].startswith(".") or not item[0].isprintable():
            raise DataError(located(path, number, f"id must be a file-name string, found {item[0]!r}"))
        if item[0] in seen:
            raise DataError(located(path, number, f"duplicate id {item[0]!r} (first on line {seen[item[0]]})"))
        seen[item[0]] = number
        if drop_keywords and HFM_KEYWORDS & set(item[1].split()):
            continue
        rows.append({"id": item[0], "text": item[1], "label": label, "image_id": f"{item[0]}.jpg"})
    if not rows:
        raise DataError(f"{path}: no examples")
    return rows


def _mvsa_reader(raw_dir: Path, split: str):
    folder = raw_dir / FOLD if (raw_dir / FOLD).is_dir() else raw_dir
    path = folder / f"{split}.json"
    if not path.exists():
        raise DataError(f"{path}: not found (CLMLF layout: dataset/data/MVSA-*/{FOLD}/{{train,dev,test}}.json)")
    return read_json(path, len(MVSA_LABELS)), [path]


def _hfm_reader(raw_dir: Path, split: str):
    names = ["valid.json", "dev.json"] if split == "dev" else [f"{split}.json"]
    for name in names:
        if (raw_dir / name).exists():
            return read_json(raw_dir / name, len(HFM_LABELS)), [raw_dir / name]
    for folder in (raw_dir / "text", raw_dir):
        path = folder / HFM_RAW_FILES[split]
        if path.exists():
            return read_hfm_raw(path, drop_keywords=split == "train"), [path]
    raise DataError(f"{raw_dir}: no HFM {split} split (CLMLF {'/'.join(names)} or headacheboy text/{HFM_RAW_FILES[split]})")


# -- synthetic data in CLMLF's JSON layout, with a signal in both text and image -------------------
SYNTH_PHRASES = {
    "mvsa": {0: ["is amazing", "looks great", "is so happy", "loves it"], 1: ["is here", "spoke today", "is in town", "posted this"],
             2: ["is terrible", "looks awful", "is so sad", "hates it"]},
    "hfm": {0: ["is here", "spoke today", "is in town", "posted this"], 1: ["is amazing", "won again", "loves it", "looks great"]},
}
SYNTH_COLOURS = {0: (40, 200, 40), 1: (128, 128, 128), 2: (200, 40, 40)}
# Class priors of the real training splits (MVSA-Single 2147/376/1088, HFM 11174/8642; see the catalog's
# published_label_counts). Why not uniform: SPP-SCL's L_clm step (Algorithm 1) runs when c < α·c_mask, and
# c_mask, the number of same-label pairs, is B²·Σ p_k², 1/3·B² under a uniform prior against 0.46·B² on
# MVSA-Single; on uniform synthetic data the step hardly ever ran, so the smoke "w/o L_clm" row tested nothing.
SYNTH_PRIOR = {"mvsa": (2147, 376, 1088), "hfm": (11174, 8642)}
SYNTH_SIZES = {"train": 240, "dev": 64, "test": 64}


def write_synthetic_clmlf(raw_dir: Path, images_dir: Path, kind: str, seed: int = 7, sizes: dict | None = None) -> None:
    """Synthetic CLMLF JSON + `{id}.jpg`; labels drawn with the real training split's class prior
    (SYNTH_PRIOR); the text phrase is right 70% of the time, the image colour 80% of the time
    (independently), so the fused model can beat either modality."""
    from PIL import Image

    from mmbench.data.synthetic import FILLER, NAMES

    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    phrases = SYNTH_PHRASES[kind]
    labels = sorted(phrases)
    raw_dir.mkdir(parents=True, exist_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    next_id = 100
    for split, n in (sizes or SYNTH_SIZES).items():
        items = []
        for _ in range(n):
            label = rng.choices(labels, weights=SYNTH_PRIOR[kind])[0]
            text_label = label if rng.random() < 0.7 else rng.choice(labels)
            image_label = label if rng.random() < 0.8 else rng.choice(labels)
            words = [rng.choice(FILLER), rng.choice(NAMES), *rng.choice(phrases[text_label]).split(), rng.choice(FILLER)]
            items.append({"id": str(next_id), "text": " ".join(words), "emotion_label": label})
            colour = np.array(SYNTH_COLOURS[image_label if kind == "mvsa" else 2 * image_label], dtype=np.float32)
            pixels = np.clip(colour + np_rng.normal(0, 40, size=(40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(images_dir / f"{next_id}.jpg", quality=90)
            next_id += 1
        name = "valid" if (kind == "hfm" and split == "dev") else split
        folder = raw_dir / FOLD if kind == "mvsa" else raw_dir
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(items, indent=2), encoding="utf-8")


def write_hfm_raw(path: Path, rows: list[dict], extra_label: bool) -> None:
    """Rows in headacheboy's txt form (CRLF, literal lists; valid2/test2 carry an extra label first)."""
    lines = [repr([r["id"], r["text"], *([r["label"]] if extra_label else []), r["label"]]) for r in rows]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))


_CLMLF_SOURCE = ("CLMLF's splits (https://github.com/Link-Li/CLMLF, dataset/data/{folder}); images {{id}}.jpg from {images}")

MVSA_SINGLE_SPEC = DatasetSpec(
    name="mvsa-single", title="MVSA-Single (CLMLF 10-flod-1)",
    source=_CLMLF_SOURCE.format(folder="MVSA-single/10-flod-1", images="the MVSA release (mcrlab.net, MVSA_Single/data)"),
    read_split=_mvsa_reader, write_synthetic=lambda raw, images: write_synthetic_clmlf(raw, images, "mvsa"),
    published_counts={"train": 3611, "dev": 450, "test": 450},
    # counted on CLMLF's files (official-code.md §4b gives the test counts)
    published_label_counts={"train": (2147, 376, 1088), "dev": (268, 47, 135), "test": (268, 47, 135)},
    label_names=MVSA_LABELS,
)
MVSA_MULTIPLE_SPEC = DatasetSpec(
    name="mvsa-multiple", title="MVSA-Multiple (CLMLF 10-flod-1)",
    source=_CLMLF_SOURCE.format(folder="MVSA-multiple/10-flod-1", images="the MVSA release (mcrlab.net, MVSA/data)"),
    read_split=_mvsa_reader, write_synthetic=lambda raw, images: write_synthetic_clmlf(raw, images, "mvsa"),
    published_counts={"train": 13624, "dev": 1700, "test": 1700},
    published_label_counts={"test": (1131, 440, 129)},
    label_names=MVSA_LABELS,
)
HFM_SPEC = DatasetSpec(
    name="hfm", title="HFM multimodal sarcasm (CLMLF split)",
    source=(_CLMLF_SOURCE.format(folder="HFM ({train,valid,test}.json)", images="headacheboy/data-of-multimodal-sarcasm-detection")
            + "; or the raw headacheboy text/{train,valid2,test2}.txt"),
    read_split=_hfm_reader, write_synthetic=lambda raw, images: write_synthetic_clmlf(raw, images, "hfm"),
    published_counts={"train": 19816, "dev": 2410, "test": 2409},
    published_label_counts={"train": (11174, 8642), "dev": (1451, 959), "test": (1450, 959)},
    label_names=HFM_LABELS,
)
