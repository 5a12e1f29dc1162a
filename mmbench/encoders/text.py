"""Text encoders by Hugging Face name, local directory, or `tiny-*` preset.

A weight that is not available offline gives one error that names what is needed and how to
provide it, instead of transformers' misleading messages."""

from __future__ import annotations

import os
from pathlib import Path

from mmbench.encoders.tiny import TINY_TEXT, tiny_text_model, tiny_tokenizer
from mmbench.errors import WeightsNotFound

HOW_TO_PROVIDE = (
    "download it once with internet (it is cached under $HF_HOME), or point the recipe at a local "
    "directory with `--set model.{key}=/path/to/model`"
)


def _resolve_pretrained(name: str, key: str) -> str:
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or path.exists()
    if looks_local:
        if not (path / "config.json").exists():
            raise WeightsNotFound(f"{key}={name}: no Hugging Face model directory there (config.json missing)")
        return str(path)
    return name


def load_text_encoder(name: str, key: str = "text_encoder"):
    """(model, tokenizer) for a preset, a hub name or a local directory."""
    if name in TINY_TEXT:
        kind = TINY_TEXT[name]
        return tiny_text_model(kind), tiny_tokenizer(kind)
    from transformers import AutoModel, AutoTokenizer

    source = _resolve_pretrained(name, key)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        # fp32 master weights: autocast handles bf16 on GPU (transformers 5 would keep a bf16 checkpoint as bf16)
        model = AutoModel.from_pretrained(source, dtype="float32", add_pooling_layer=False) if _is_bert_like(source) \
            else AutoModel.from_pretrained(source, dtype="float32")
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise WeightsNotFound(
            f"{key}={name}: weights not available{' offline' if offline else ''} ({str(exc).splitlines()[0]}); "
            + HOW_TO_PROVIDE.format(key=key)
        ) from None
    return model, tokenizer


def _is_bert_like(source: str) -> bool:
    """BERT/RoBERTa models take add_pooling_layer; we classify from the first token ourselves."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source).model_type in {"bert", "roberta", "xlm-roberta"}
