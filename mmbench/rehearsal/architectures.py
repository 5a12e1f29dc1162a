"""Built-in architecture configs of every pretrained encoder the recipes name, as plain dicts: the
`config.json` (architecture keys only), the tokenizer's vocabulary layout and the image
preprocessor of each published checkpoint. `mmbench rehearse` builds these with random weights, so a
recipe runs at its real sizes with no download.

Each entry also carries the published model's parameter count (`params`, with the `count_with`
constructor arguments that give that count) so that tests/shared/test_rehearse_architectures.py can
prove the copy matches the checkpoint it stands for.
"""

from __future__ import annotations

import copy

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

# Tokenizer layouts (special tokens at the checkpoint's ids; everything else is filler up to the
# real vocabulary size): see mmbench.rehearsal.tokenizer.
BERT_UNCASED = {"style": "bert", "vocab_size": 30522, "lowercase": True, "model_max_length": 512,
                "specials": {"pad": ("[PAD]", 0), "unk": ("[UNK]", 100), "cls": ("[CLS]", 101), "sep": ("[SEP]", 102),
                             "mask": ("[MASK]", 103)}}
ROBERTA = {"style": "roberta", "vocab_size": 50265, "lowercase": False, "model_max_length": 512,
           "specials": {"cls": ("<s>", 0), "pad": ("<pad>", 1), "sep": ("</s>", 2), "unk": ("<unk>", 3),
                        "mask": ("<mask>", 50264)}}
ALBERT = {"style": "bert", "vocab_size": 30000, "lowercase": True, "model_max_length": 512,
          "specials": {"pad": ("<pad>", 0), "unk": ("<unk>", 1), "cls": ("[CLS]", 2), "sep": ("[SEP]", 3),
                       "mask": ("[MASK]", 4)}}
# CLIP pads with <|endoftext|> (the released tokenizer's pad token) and has no [CLS]/[SEP] pair form
CLIP_TOKENIZER = {"style": "clip", "vocab_size": 49408, "lowercase": True, "model_max_length": 77,
                  "specials": {"cls": ("<|startoftext|>", 49406), "sep": ("<|endoftext|>", 49407),
                               "pad": ("<|endoftext|>", 49407), "unk": ("<|endoftext|>", 49407)}}

_BERT_BASE = dict(model_type="bert", architectures=["BertForMaskedLM"], vocab_size=30522, hidden_size=768,
                  num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, hidden_act="gelu",
                  hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512,
                  type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0)
_VIT_BASE = dict(model_type="vit", hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.02,
                 layer_norm_eps=1e-12, image_size=224, patch_size=16, num_channels=3, qkv_bias=True, encoder_stride=16)


def _swin(embed_dim: int, depths: list[int], heads: list[int]) -> dict:
    return dict(model_type="swin", image_size=224, patch_size=4, num_channels=3, embed_dim=embed_dim, depths=depths,
                num_heads=heads, window_size=7, mlp_ratio=4.0, qkv_bias=True, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, drop_path_rate=0.1, hidden_act="gelu", use_absolute_embeddings=False,
                initializer_range=0.02, layer_norm_eps=1e-5, encoder_stride=32)


_VIT_PROCESSOR_05 = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 224, "width": 224},
                     "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                     "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
_IMAGENET_224 = {**_VIT_PROCESSOR_05, "resample": 3, "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}

# name → {kind, config, tokenizer | processor, params, count_with, source}
ARCHITECTURES: dict[str, dict] = {
    "bert-base-uncased": {
        "kind": "text", "config": _BERT_BASE, "tokenizer": BERT_UNCASED,
        "params": 109_482_240, "count_with": {"add_pooling_layer": True},
        "source": "BERT-base (Devlin et al. 2019, '110M'); HF bert-base-uncased BertModel with pooler: 109,482,240",
    },
    "bert-large-uncased": {
        "kind": "text", "config": {**_BERT_BASE, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                                   "intermediate_size": 4096},
        "tokenizer": BERT_UNCASED, "params": 335_141_888, "count_with": {"add_pooling_layer": True},
        "source": "BERT-large ('340M'); HF bert-large-uncased BertModel with pooler: 335,141,888",
    },
    "roberta-base": {
        "kind": "text",
        "config": dict(model_type="roberta", architectures=["RobertaForMaskedLM"], vocab_size=50265, hidden_size=768,
                       num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, hidden_act="gelu",
                       hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=514,
                       type_vocab_size=1, initializer_range=0.02, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
                       eos_token_id=2),
        "tokenizer": ROBERTA, "params": 124_645_632, "count_with": {"add_pooling_layer": True},
        "source": "RoBERTa-base ('125M'); HF roberta-base RobertaModel with pooler: 124,645,632 (124,055,040 without)",
    },
    "albert-base-v2": {
        "kind": "text",
        "config": dict(model_type="albert", vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12,
                       num_hidden_groups=1, num_attention_heads=12, intermediate_size=3072, inner_group_num=1,
                       hidden_act="gelu_new", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                       max_position_embeddings=512, type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12,
                       pad_token_id=0, bos_token_id=2, eos_token_id=3),
        "tokenizer": ALBERT, "params": 11_683_584, "count_with": {"add_pooling_layer": True},
        "source": "ALBERT-base ('12M', Lan et al. 2020 Table 1); HF albert-base-v2 AlbertModel with pooler: 11,683,584",
    },
    "google/electra-base-discriminator": {
        "kind": "text",
        "config": dict(model_type="electra", vocab_size=30522, embedding_size=768, hidden_size=768, num_hidden_layers=12,
                       num_attention_heads=12, intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
                       attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=2,
                       initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0),
        "tokenizer": BERT_UNCASED, "params": 108_891_648, "count_with": {},
        "source": "ELECTRA-base ('110M'); HF ElectraModel (no pooler): 108,891,648",
    },
    "google/vit-base-patch16-224-in21k": {
        "kind": "image", "config": _VIT_BASE, "processor": _VIT_PROCESSOR_05,
        "params": 86_389_248, "count_with": {"add_pooling_layer": True},
        "source": "ViT-B/16 ('86M', Dosovitskiy et al. 2021 Table 1); HF ViTModel with pooler: 86,389,248",
    },
    # the non-distilled DeiT checkpoints are ViT models on the hub (model_type vit, one [CLS] token)
    "facebook/deit-base-patch16-224": {
        "kind": "image", "config": _VIT_BASE,
        "processor": {**_IMAGENET_224, "image_processor_type": "DeiTImageProcessor", "size": {"height": 256, "width": 256},
                      "do_center_crop": True, "crop_size": {"height": 224, "width": 224}},
        "params": 86_389_248, "count_with": {"add_pooling_layer": True},
        "source": "DeiT-B ('86M', Touvron et al. 2021 Table 1: 86,567,656 with its 1000-class head); ViTModel with pooler: 86,389,248",
    },
    "microsoft/swin-tiny-patch4-window7-224": {
        "kind": "image", "config": _swin(96, [2, 2, 6, 2], [3, 6, 12, 24]), "processor": _IMAGENET_224,
        "params": 27_519_354, "count_with": {},
        "source": "Swin-T ('28M', Liu et al. 2021 Table 1: 28,288,354 with the 1000-class head); SwinModel: 27,519,354",
    },
    "microsoft/swin-base-patch4-window7-224-in22k": {
        "kind": "image", "config": _swin(128, [2, 2, 18, 2], [4, 8, 16, 32]), "processor": _IMAGENET_224,
        "params": 86_743_224, "count_with": {},
        "source": "Swin-B ('88M', Liu et al. 2021 Table 1: 87,768,224 with the 1000-class head); SwinModel: 86,743,224",
    },
    "openai/clip-vit-large-patch14": {
        "kind": "clip",
        "config": dict(model_type="clip", projection_dim=768, logit_scale_init_value=2.6592,
                       text_config=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                        layer_norm_eps=1e-5, projection_dim=768, pad_token_id=1, bos_token_id=0,
                                        eos_token_id=2),
                       vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                          num_attention_heads=16, image_size=224, patch_size=14, hidden_act="quick_gelu",
                                          layer_norm_eps=1e-5, projection_dim=768)),
        "tokenizer": CLIP_TOKENIZER,
        "processor": {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 224},
                      "resample": 3, "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
                      "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": CLIP_MEAN,
                      "image_std": CLIP_STD, "do_convert_rgb": True},
        "params": 427_616_513, "count_with": {},
        "source": "CLIP ViT-L/14 (Radford et al. 2021; vision 303,179,776 + text 123,060,480 + projections); HF CLIPModel: 427,616,513",
    },
    # torchvision builds the architecture itself; only the ImageNet weights are skipped
    "resnet50": {
        "kind": "torchvision", "config": {}, "params": 25_557_032, "count_with": {},
        "source": "ResNet-50 (He et al. 2016, '25.6M'); torchvision resnet50 with its fc: 25,557,032",
    },
}


def get_architecture(name: str) -> dict | None:
    return ARCHITECTURES.get(name)


def scaled_config(config: dict, width_scale: float) -> dict:
    """The config with every width × `width_scale`, the number of heads kept (so a method's own head
    count still divides the hidden size: 768 × 1/16 = 48 = 12 heads of 4); depths, vocabularies,
    sequence lengths and image sizes stay real. For CI, where the code path matters and FLOPs do not."""
    if width_scale == 1:
        return copy.deepcopy(config)
    out = copy.deepcopy(config)

    def scale(value: int, multiple: int = 1) -> int:
        return max(multiple, round(value * width_scale / multiple) * multiple)

    def shrink(cfg: dict) -> None:
        if "hidden_size" in cfg:
            cfg["hidden_size"] = scale(cfg["hidden_size"], cfg.get("num_attention_heads", 1))
        for key in ("intermediate_size", "projection_dim", "embedding_size"):
            if key in cfg:
                cfg[key] = scale(cfg[key])
        if "embed_dim" in cfg:  # Swin: width doubles per stage; keep it divisible by the first stage's heads
            cfg["embed_dim"] = scale(cfg["embed_dim"], cfg["num_heads"][0])

    shrink(out)
    for sub in ("text_config", "vision_config"):
        if sub in out:
            shrink(out[sub])
    return out
