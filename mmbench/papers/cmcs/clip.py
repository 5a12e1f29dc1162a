"""CLIP for CMCS: the vision tower gives E^v (eq 4), the text tower embeds the eq-15 prompt.

`load_clip(name)` returns (CLIPModel, image processor, tokenizer) for a Hugging Face name or a local
directory, or for the `tiny-clip` preset: a random-init CLIP built from a small config with the
foundation's offline tiny tokenizer, for tests and `--smoke` (no download)."""

from __future__ import annotations

TINY_CLIP = "tiny-clip"


def tiny_clip():
    from mmbench.encoders.image import load_image_encoder
    from mmbench.encoders.tiny import tiny_tokenizer

    model, processor = load_image_encoder(TINY_CLIP)
    return model, processor, tiny_tokenizer("bert")


def load_clip(name: str, key: str = "image_encoder"):
    if name == TINY_CLIP:
        return tiny_clip()
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    from mmbench.encoders.pretrained import load_or_explain

    def load(source: str):
        return (CLIPModel.from_pretrained(source, dtype="float32"), CLIPImageProcessor.from_pretrained(source),
                AutoTokenizer.from_pretrained(source))

    return load_or_explain(name, key, load)
