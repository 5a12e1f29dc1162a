"""TomBERT's Twitter-2015/2017 files (jefferyYu/TomBERT, absa_data/twitter2015 and absa_data/twitter).

Two forms of the same data:
- `{split}.tsv`: a header line, then `index \t label \t image_id \t sentence-with-$T$ \t target`,
  label 0/1/2 = negative/neutral/positive. The test header names 4 columns over 5-field rows, so
  fields are read by position, never by header name.
- `{split}.txt`: blocks of 4 lines (sentence-with-$T$, target, polarity -1/0/1, image file); a blank
  line or the end of the file ends the data.
Both give rows {id, sentence, target, label (0/1/2), image_id}.
"""

from __future__ import annotations

from pathlib import Path

from mmbench.data.formats import read_text
from mmbench.errors import DataError, located

PLACEHOLDER = "$T$"
LABEL_NAMES = ["negative", "neutral", "positive"]

# Published statistics of the Twitter TMSC splits (as published with the
# TomBERT release and reprinted by later papers): per split, (targets, (negative, neutral, positive)).
TWITTER_STATS = {
    "twitter15": {"train": (3179, (368, 1883, 928)), "dev": (1122, (149, 670, 303)), "test": (1037, (113, 607, 317))},
    "twitter17": {"train": (3562, (416, 1638, 1508)), "dev": (1176, (144, 517, 515)), "test": (1234, (168, 573, 493))},
}


def published_stats(name: str) -> dict:
    """`published_counts` and `published_label_counts` of a DatasetSpec for twitter15/twitter17."""
    stats = TWITTER_STATS[name]
    return {"published_counts": {split: n for split, (n, _) in stats.items()},
            "published_label_counts": {split: labels for split, (_, labels) in stats.items()}}


def _check_sentence(path: Path, line: int, sentence: str) -> None:
    count = sentence.count(PLACEHOLDER)
    if count != 1:
        raise DataError(located(path, line, f"sentence must contain {PLACEHOLDER} exactly once, found {count}"))


def read_tsv(path: Path) -> list[dict]:
    rows, seen = [], {}
    lines = read_text(path, "TomBERT split file").split("\n")
    if not lines or not lines[0].startswith("index"):
        raise DataError(located(path, 1, "expected TomBERT's header line starting with 'index'"))
    for number, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if line == "":
            continue
        fields = line.split("\t")
        if len(fields) != 5:
            raise DataError(located(path, number, f"expected 5 tab-separated fields, found {len(fields)}"))
        index, label, image_id, sentence, target = fields
        if label not in ("0", "1", "2"):
            raise DataError(located(path, number, f"label must be 0, 1 or 2, found {label!r}"))
        _check_sentence(path, number, sentence)
        if not target.strip():
            raise DataError(located(path, number, "empty target"))
        if index in seen:
            raise DataError(located(path, number, f"duplicate index {index!r} (first on line {seen[index]})"))
        seen[index] = number
        rows.append(
            {"id": f"{path.stem}-{index}", "sentence": sentence, "target": target, "label": int(label), "image_id": image_id}
        )
    return rows


def read_txt(path: Path) -> list[dict]:
    lines = [line.rstrip("\r") for line in read_text(path, "TomBERT split file").split("\n")]
    rows = []
    start = 0
    while start < len(lines) and lines[start].strip() != "":
        block = lines[start : start + 4]
        if len(block) < 4 or any(line.strip() == "" for line in block):
            raise DataError(located(path, start + 1, "truncated block: expected 4 lines (sentence, target, polarity, image)"))
        sentence, target, polarity, image_id = block
        _check_sentence(path, start + 1, sentence)
        if polarity.strip() not in ("-1", "0", "1"):
            raise DataError(located(path, start + 3, f"polarity must be -1, 0 or 1, found {polarity!r}"))
        rows.append(
            {
                "id": f"{path.stem}-{len(rows) + 1}",
                "sentence": sentence.strip(),
                "target": target.strip(),
                "label": int(polarity) + 1,
                "image_id": image_id.strip(),
            }
        )
        start += 4
    # a blank line ends the data only when nothing follows it (else it silently cut the split short)
    rest = next((n for n in range(start, len(lines)) if lines[n].strip()), None)
    if rest is not None:
        raise DataError(located(path, start + 1, f"blank line inside the data (more blocks follow on line {rest + 1})"))
    return rows


def _nonempty(path: Path, rows: list[dict]) -> list[dict]:
    if not rows:
        raise DataError(f"{path}: no examples")
    return rows


def read_split(raw_dir: Path, split: str) -> tuple[list[dict], list[Path]]:
    """Read one split, preferring the tsv form; returns the rows and the files read."""
    tsv, txt = raw_dir / f"{split}.tsv", raw_dir / f"{split}.txt"
    if tsv.exists():
        return _nonempty(tsv, read_tsv(tsv)), [tsv]
    if txt.exists():
        return _nonempty(txt, read_txt(txt)), [txt]
    raise DataError(f"{raw_dir}: neither {split}.tsv nor {split}.txt exists (TomBERT's absa_data layout)")


def write_tsv(path: Path, rows: list[dict], with_label: bool = True) -> None:
    """Write rows in TomBERT's tsv form (the test header's 4-name quirk included)."""
    header = "index\t#1 Label\t#2 ImageID\t#3 String\t#3 String" if with_label else "index\t#1 ImageID\t#2 String\t#2 String"
    lines = [header]
    for i, row in enumerate(rows, start=1):
        lines.append(f"{i}\t{row['label']}\t{row['image_id']}\t{row['sentence']}\t{row['target']}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_txt(path: Path, rows: list[dict]) -> None:
    lines = []
    for row in rows:
        lines += [row["sentence"], row["target"], str(row["label"] - 1), row["image_id"]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
