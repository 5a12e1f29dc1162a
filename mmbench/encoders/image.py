"""Image encoders by Hugging Face name, local directory, or `tiny-*` preset (random init, 32×32
inputs) for tests and smoke runs. Returns (model, image_processor)."""

from __future__ import annotations

from mmbench.encoders.pretrained import load_or_explain

TINY_IMAGE_SIZE = 32


def _tiny(name: str):
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, ResNetConfig, ResNetModel, ViTConfig,
                              ViTImageProcessor, ViTModel)

    size = {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    if name == "tiny-vit":
        config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           image_size=TINY_IMAGE_SIZE, patch_size=8)
        return ViTModel(config, add_pooling_layer=False), ViTImageProcessor(size=size)
    if name == "tiny-clip":
        from mmbench.encoders.tiny import TINY_HIDDEN, tiny_tokenizer, tiny_vocab

        tokenizer = tiny_tokenizer("bert")
        text = dict(vocab_size=len(tiny_vocab()), hidden_size=TINY_HIDDEN, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, max_position_embeddings=77,
                    # CLIP pools the first end-of-text token: the tiny tokenizer ends with [SEP]
                    pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                    eos_token_id=tokenizer.sep_token_id)
        vision = dict(hidden_size=TINY_HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      image_size=TINY_IMAGE_SIZE, patch_size=8)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=TINY_HIDDEN))
        return model, CLIPImageProcessor(size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size=size)
    if name == "tiny-resnet":
        config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], layer_type="basic")
        return ResNetModel(config), ViTImageProcessor(size=size, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    raise KeyError(name)


TINY_IMAGE = ("tiny-vit", "tiny-clip", "tiny-resnet")


def load_image_encoder(name: str, key: str = "image_encoder"):
    if name in TINY_IMAGE:
        return _tiny(name)
    from transformers import AutoImageProcessor, AutoModel

    return load_or_explain(
        name, key, lambda source: (AutoModel.from_pretrained(source, dtype="float32"), AutoImageProcessor.from_pretrained(source))
    )
