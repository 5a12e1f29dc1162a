"""Loading a pretrained model by Hugging Face name or local directory, with one clear error when
the weights are not available (transformers' own messages mislead offline).

Every encoder load goes through `load_or_explain`, which is also the rehearsal hook: while
`mmbench rehearse` runs (`weight_provider(...)` is active) the provider builds the named model from a
built-in architecture config with random weights instead (mmbench.rehearsal.weights); loaders that
do not go through transformers (torchvision) ask `random_weights_active()` and skip their weights."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

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


# (name, key, loader) -> what loader returns; set only inside `weight_provider`
_provider: Callable[[str, str, Callable], object] | None = None


@contextmanager
def weight_provider(provider: Callable[[str, str, Callable], object]) -> Iterator[None]:
    global _provider
    previous, _provider = _provider, provider
    try:
        yield
    finally:
        _provider = previous


def random_weights_active() -> bool:
    return _provider is not None


def load_or_explain(name: str, key: str, loader: Callable[[str], T]) -> T:
    if _provider is not None:
        return _provider(name, key, loader)  # type: ignore[return-value]
    source = resolve_source(name, key)
    try:
        return loader(source)
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise WeightsNotFound(
            f"{key}={name}: weights not available{' offline' if offline else ''} ({str(exc).splitlines()[0]}); "
            + HOW_TO_PROVIDE.format(key=key)
        ) from None
