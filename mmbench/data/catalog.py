"""The datasets mmbench can prepare: where their raw files come from, how to read them, and the
published statistics a prepared copy is checked against. One entry per dataset, in `DATASETS`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mmbench.data.formats.tombert import LABEL_NAMES, published_stats
from mmbench.registry import Registry

SplitReader = Callable[[Path, str], "tuple[list[dict], list[Path]]"]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    source: str  # where a user gets the raw files (shown in errors and README)
    read_split: SplitReader
    write_synthetic: Callable[[Path, Path], None]  # (raw_dir, images_dir)
    published_counts: dict[str, int]
    label_names: tuple[str, ...]
    published_label_counts: dict[str, tuple[int, ...]] = field(default_factory=dict)
    splits: tuple[str, ...] = ("train", "dev", "test")
    # optional extra step (e.g. indexing region features) run after the rows are read, called as
    # prepare_extra(raw=, out=, images=, splits=, synthetic=, allow_count_mismatch=) -> manifest["extra"]
    prepare_extra: Callable[..., dict] | None = None


def _tombert_reader(raw_dir: Path, split: str):
    from mmbench.data.formats.tombert import read_split

    return read_split(raw_dir, split)


def _tombert_synthetic(raw_dir: Path, images_dir: Path) -> None:
    from mmbench.data.synthetic import write_twitter

    write_twitter(raw_dir, images_dir)


_TOMBERT_SOURCE = (
    "TomBERT's absa_data (https://github.com/jefferyYu/TomBERT: {folder}/{{train,dev,test}}.tsv or .txt); "
    "images from the Google Drive link in TomBERT's README (IJCAI2019_data/{images})"
)

DATASETS: Registry[DatasetSpec] = Registry("dataset")
for _name, _year, _folder in (("twitter15", "2015", "twitter2015"), ("twitter17", "2017", "twitter")):
    DATASETS.register(_name, DatasetSpec(
        name=_name,
        title=f"Twitter-{_year} (TMSC)",
        source=_TOMBERT_SOURCE.format(folder=f"absa_data/{_folder}", images=f"twitter{_year}_images"),
        read_split=_tombert_reader,
        write_synthetic=_tombert_synthetic,
        label_names=tuple(LABEL_NAMES),
        **published_stats(_name),
    ))


# Datasets of single papers live beside their readers and register here lazily ("module:attr").
for _name, _target in {
    "itm-vg": "mmbench.papers.itm.data:ITM_VG_SPEC",
    "itm-twitter15": "mmbench.papers.itm.data:ITM_TWITTER15_SPEC",
    "itm-twitter17": "mmbench.papers.itm.data:ITM_TWITTER17_SPEC",
    "mvsa-single": "mmbench.data.formats.clmlf:MVSA_SINGLE_SPEC",
    "mvsa-multiple": "mmbench.data.formats.clmlf:MVSA_MULTIPLE_SPEC",
    "hfm": "mmbench.data.formats.clmlf:HFM_SPEC",
    "flickr30k": "mmbench.data.formats.scan:FLICKR30K_SPEC",
    "coco": "mmbench.data.formats.scan:COCO_SPEC",
}.items():
    DATASETS.register(_name, _target)


def get_dataset(name: str) -> DatasetSpec:
    return DATASETS.get(name)
