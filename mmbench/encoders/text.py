"""Text encoders by Hugging Face name, local directory, or `tiny-*` preset."""

from __future__ import annotations

from mmbench.encoders.pretrained import load_or_explain
from mmbench.encoders.tiny import TINY_TEXT, tiny_text_model, tiny_tokenizer

# models whose pooler we drop: the methods classify from token states themselves, and an unused
# pooler breaks DDP's gradient bookkeeping
_POOLER_MODELS = {"bert", "roberta", "xlm-roberta"}


def load_text_encoder(name: str, key: str = "text_encoder"):
    """(model, tokenizer) for a preset, a hub name or a local directory; fp32 master weights
    (transformers 5 would keep a bf16 checkpoint in bf16; autocast handles bf16 on GPU)."""
    if name in TINY_TEXT:
        kind = TINY_TEXT[name]
        return tiny_text_model(kind), tiny_tokenizer(kind)
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    def load(source: str):
        extra = {"add_pooling_layer": False} if AutoConfig.from_pretrained(source).model_type in _POOLER_MODELS else {}
        return AutoModel.from_pretrained(source, dtype="float32", **extra), AutoTokenizer.from_pretrained(source)

    return load_or_explain(name, key, load)
