"""CLIP for CMCS: the vision tower gives E^v (eq 4), the text tower embeds the eq-15 prompt.

`load_clip(name)` returns (CLIPModel, image processor, tokenizer) for a Hugging Face name or a local
directory, or for the `tiny-clip` preset: a random-init CLIP built from a small config with the
foundation's offline tiny tokenizer, for tests and `--smoke` (no download)."""

from __future__ import annotations

TINY_CLIP = "tiny-clip"
TINY_IMAGE_SIZE = 32


def tiny_clip():
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from mmbench.encoders.tiny import TINY_HIDDEN, tiny_tokenizer, tiny_vocab

    tokenizer = tiny_tokenizer("bert")
    text = dict(vocab_size=len(tiny_vocab()), hidden_size=TINY_HIDDEN, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77,
                # CLIP pools the first end-of-text token: the tiny tokenizer ends with [SEP]
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    vision = dict(hidden_size=TINY_HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=TINY_IMAGE_SIZE, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=TINY_HIDDEN))
    processor = CLIPImageProcessor(size={"shortest_edge": TINY_IMAGE_SIZE},
                                   crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    return model, processor, tokenizer


def load_clip(name: str, key: str = "image_encoder"):
    if name == TINY_CLIP:
        return tiny_clip()
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    from mmbench.encoders.pretrained import load_or_explain

    def load(source: str):
        return (CLIPModel.from_pretrained(source, dtype="float32"), CLIPImageProcessor.from_pretrained(source),
                AutoTokenizer.from_pretrained(source))

    return load_or_explain(name, key, load)
