"""ITM's own data files (NUSTM/ITM, `data/`), read with a restricted unpickler.

- `Image_Target_Matching/VG_{train,dev,test}.pkl`: the auxiliary Image-Target Matching set
  (1176/588/588 targets over 600/297/280 Twitter-2017 images, paper Table 1).
- `Sentiment_Analysis/twitter20{15,17}/{train,dev,test}.pkl`: TomBERT's Twitter-15/17 splits
  repackaged (same counts as TomBERT's tsv files).

Every file is a plain dict `{'1': {...}, '2': {...}, ...}` whose values have the fields
`iid` (image file stem), `sentence` (with `$T$` once), `aspect` (the target), `sentiment`
('0'/'1'/'2' = negative/neutral/positive), `relation` ('0' unrelated, '1'/'2' related, None in
the TMSC files) and `boxes` (list of (x1, y1, x2, y2) pixel tuples). Rows become
{id, sentence, target, label, iid, relation (-1 none / 0 / 1), relation_raw, boxes}.

Region features (`{iid}.jpg.npz`) are indexed at prepare time from the `--images` folder into a
memory-mapped store (see `regions.py`); if that folder does not exist the rows are still
prepared (so the published counts can be checked) and methods that need features say what to do.
"""

from __future__ import annotations

import io
import pickle
from collections import Counter
from pathlib import Path

from mmbench.data.catalog import DatasetSpec
from mmbench.papers.itm.regions import build_region_store
from mmbench.data.formats.tombert import published_stats
from mmbench.errors import DataError, located

PLACEHOLDER = "$T$"
LABEL_NAMES = ("negative", "neutral", "positive")
FIELDS = ("iid", "sentence", "aspect", "sentiment", "relation", "boxes")
# bottom-up-attention features as ITM distributes them
REAL_FEATURE_DIM, REAL_NUM_REGIONS = 2048, 100
# paper Table 1: (#targets, #images, #related, #unrelated) per split
VG_TABLE1 = {"train": (1176, 600, 459, 717), "dev": (588, 297, 254, 334), "test": (588, 280, 270, 318)}


class _BuiltinsOnly(pickle.Unpickler):
    """Unpickler that builds only what pickle's own opcodes build (dict, list, tuple, str, bytes,
    int, float, bool, None) plus the builtin set types, which protocols < 4 reference by name; any
    other class or function reference is refused."""

    _ALLOWED = {("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"), ("__builtin__", "frozenset")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return {"set": set, "frozenset": frozenset}[name]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only builtin containers and scalars are allowed")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing a persistent id: only builtin containers and scalars are allowed")


def load_plain_pickle(path: Path):
    try:
        with open(path, "rb") as handle:
            return _BuiltinsOnly(io.BytesIO(handle.read())).load()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:  # a folder, an unreadable file
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise DataError(f"{path}: not a plain-data pickle ({exc})") from None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_examples(path: Path, data, split: str) -> list[dict]:
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a non-empty dict of examples at the top level, found {type(data).__name__} of {len(data) if hasattr(data, '__len__') else '?'}")
    rows = []
    for key, value in data.items():
        where = f"[{key!r}]"
        if not isinstance(value, dict):
            raise DataError(located(path, where, f"expected a dict, found {type(value).__name__}"))
        missing = [f for f in FIELDS if f not in value]
        if missing:
            raise DataError(located(path, where, f"missing field(s) {', '.join(missing)}"))
        iid, sentence, aspect = value["iid"], value["sentence"], value["aspect"]
        for name, text in (("iid", iid), ("sentence", sentence), ("aspect", aspect)):
            if not isinstance(text, str) or not text.strip() or "\x00" in text:
                raise DataError(located(path, f"{where}.{name}", f"expected a non-empty string without NUL, found {text!r}"))
        if not iid.isprintable() or "/" in iid or "\\" in iid or iid.startswith("."):
            raise DataError(located(path, f"{where}.iid", f"expected an image file stem, found {iid!r}"))
        if sentence.count(PLACEHOLDER) != 1:
            raise DataError(located(path, f"{where}.sentence", f"must contain {PLACEHOLDER} exactly once, found {sentence.count(PLACEHOLDER)}"))
        if value["sentiment"] not in ("0", "1", "2"):
            raise DataError(located(path, f"{where}.sentiment", f"must be '0', '1' or '2', found {value['sentiment']!r}"))
        relation = value["relation"]
        if relation not in (None, "0", "1", "2"):
            raise DataError(located(path, f"{where}.relation", f"must be None, '0', '1' or '2', found {relation!r}"))
        boxes = value["boxes"]
        if not isinstance(boxes, (list, tuple)):
            raise DataError(located(path, f"{where}.boxes", f"expected a list of boxes, found {type(boxes).__name__}"))
        for n, box in enumerate(boxes):
            if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(_is_number(v) for v in box)
                    and box[0] < box[2] and box[1] < box[3]):
                raise DataError(located(path, f"{where}.boxes[{n}]", f"expected (x1, y1, x2, y2) with x1<x2, y1<y2, found {box!r}"))
        rows.append({
            "id": f"{split}-{key}",
            "sentence": sentence,
            "target": aspect,
            "label": int(value["sentiment"]),
            "iid": iid,
            # '2' counts as related (ITM's DataProcessor maps it to 1: the task is binary)
            "relation": -1 if relation is None else min(int(relation), 1),
            "relation_raw": -1 if relation is None else int(relation),
            "boxes": [[float(v) for v in box] for box in boxes],
        })
    return rows


def read_vg_split(raw_dir: Path, split: str) -> tuple[list[dict], list[Path]]:
    path = raw_dir / f"VG_{split}.pkl"
    if not path.exists():
        raise DataError(f"{raw_dir}: VG_{split}.pkl not found (ITM's data/Image_Target_Matching layout)")
    return parse_examples(path, load_plain_pickle(path), split), [path]


def read_tmsc_split(raw_dir: Path, split: str) -> tuple[list[dict], list[Path]]:
    path = raw_dir / f"{split}.pkl"
    if not path.exists():
        raise DataError(f"{raw_dir}: {split}.pkl not found (ITM's data/Sentiment_Analysis/twitter20xx layout)")
    return parse_examples(path, load_plain_pickle(path), split), [path]


def relevance_stats(rows: list[dict]) -> dict:
    counts = Counter(row["relation"] for row in rows)
    return {"targets": len(rows), "images": len({row["iid"] for row in rows}), "related": counts.get(1, 0),
            "unrelated": counts.get(0, 0), "related_with_box": sum(1 for r in rows if r["relation"] == 1 and r["boxes"])}


def _index_features(images: Path, out: Path, splits: dict[str, list[dict]], synthetic: bool) -> dict:
    if not images.is_dir():
        return {"regions": None, "note": f"{images}: no region-feature folder; rows prepared without features"}
    iids = [row["iid"] for rows in splits.values() for row in rows]
    dims = (None, None) if synthetic else (REAL_FEATURE_DIM, REAL_NUM_REGIONS)
    return {"regions": build_region_store(images, iids, out, *dims)}


def prepare_vg_extra(raw: Path, out: Path, images: Path, splits: dict[str, list[dict]], synthetic: bool,
                     allow_count_mismatch: bool = False) -> dict:
    """Check Table 1 (targets, images, related/unrelated) and index the region features."""
    stats = {split: relevance_stats(rows) for split, rows in splits.items()}
    problems = []
    if not synthetic:
        for split, (targets, n_images, related, unrelated) in VG_TABLE1.items():
            got = stats[split]
            if (got["targets"], got["images"], got["related"], got["unrelated"]) != (targets, n_images, related, unrelated):
                problems.append(f"{split}: {got} vs published {targets}/{n_images}/{related}/{unrelated}")
    if problems and not allow_count_mismatch:
        raise DataError(f"{raw}: ITM Table 1 statistics differ ({'; '.join(problems)}); "
                        "pass --allow-count-mismatch to prepare anyway")
    check = "synthetic (not checked)" if synthetic else ("mismatch allowed: " + "; ".join(problems) if problems else "ok")
    return {"relevance": stats, "table1_check": check,
            **_index_features(images, out, splits, synthetic)}


def prepare_tmsc_extra(raw: Path, out: Path, images: Path, splits: dict[str, list[dict]], synthetic: bool,
                       allow_count_mismatch: bool = False) -> dict:
    return _index_features(images, out, splits, synthetic)


def _vg_synthetic(raw_dir: Path, images_dir: Path) -> None:
    from mmbench.papers.itm.synthetic import write_vg

    write_vg(raw_dir, images_dir)


def _tmsc_synthetic(raw_dir: Path, images_dir: Path) -> None:
    from mmbench.papers.itm.synthetic import write_tmsc

    write_tmsc(raw_dir, images_dir)


_SOURCE = ("NUSTM/ITM (https://github.com/NUSTM/ITM) data/{folder}; region features {{iid}}.jpg.npz from the "
           "Google Drive / Baidu links in its README (pass the folder as --images)")

ITM_VG_SPEC = DatasetSpec(
    name="itm-vg",
    title="ITM Image-Target Matching (relevance + object-target alignment)",
    source=_SOURCE.format(folder="Image_Target_Matching/VG_{train,dev,test}.pkl (Twitter-2017 features)"),
    read_split=read_vg_split,
    write_synthetic=_vg_synthetic,
    published_counts={split: row[0] for split, row in VG_TABLE1.items()},
    # counted from the released files (the paper prints relevance counts, checked in prepare_extra)
    published_label_counts={"train": (77, 569, 530), "dev": (49, 270, 269), "test": (95, 247, 246)},
    label_names=LABEL_NAMES,
    prepare_extra=prepare_vg_extra,
)


def _tmsc_spec(name: str, folder: str) -> DatasetSpec:
    return DatasetSpec(
        name=f"itm-{name}",
        title=f"Twitter-20{name[-2:]} (TMSC), ITM's pkl form",
        source=_SOURCE.format(folder=f"Sentiment_Analysis/{folder}/{{train,dev,test}}.pkl"),
        read_split=read_tmsc_split,
        write_synthetic=_tmsc_synthetic,
        label_names=LABEL_NAMES,
        prepare_extra=prepare_tmsc_extra,
        **published_stats(name),
    )


ITM_TWITTER15_SPEC = _tmsc_spec("twitter15", "twitter2015")
ITM_TWITTER17_SPEC = _tmsc_spec("twitter17", "twitter2017")
