"""Loading a pretrained model by Hugging Face name or local directory, with one clear error when
the weights are not available (transformers' own messages mislead offline)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, TypeVar

from mmbench.errors import WeightsNotFound

T = TypeVar("T")

HOW_TO_PROVIDE = (
    "download it once with internet (it is cached under $HF_HOME), or point the recipe at a local "
    "directory with `--set model.{key}=/path/to/model`"
)


def resolve_source(name: str, key: str) -> str:
    """A local directory (checked) or a hub name (left to from_pretrained)."""
    path = Path(name).expanduser()
    if name.startswith((".", "/", "~")) or path.exists():
        if not (path / "config.json").exists() and not (path / "preprocessor_config.json").exists():
            raise WeightsNotFound(f"{key}={name}: no Hugging Face model directory there (config.json missing)")
        return str(path)
    return name


def load_or_explain(name: str, key: str, loader: Callable[[str], T]) -> T:
    source = resolve_source(name, key)
    try:
        return loader(source)
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise WeightsNotFound(
            f"{key}={name}: weights not available{' offline' if offline else ''} ({str(exc).splitlines()[0]}); "
            + HOW_TO_PROVIDE.format(key=key)
        ) from None
