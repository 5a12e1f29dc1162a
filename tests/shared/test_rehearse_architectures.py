"""The built-in architecture copies are the published models: parameter counts (counted on the meta
device, no memory, no init), the offline tokenizer's vocabulary, and the loading hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmbench.rehearsal.architectures import ARCHITECTURES, BERT_UNCASED, CLIP_TOKENIZER, ROBERTA, scaled_config

# Published parameter counts, written out independently of ARCHITECTURES (model cards / papers;
# each entry's `source` says which count and with which head).
PUBLISHED = {
    "bert-base-uncased": 109_482_240,  # with pooler ("110M")
    "bert-large-uncased": 335_141_888,  # with pooler ("340M")
    "roberta-base": 124_645_632,  # with pooler ("125M"); 124,055,040 without
    "albert-base-v2": 11_683_584,  # "12M"
    "google/electra-base-discriminator": 108_891_648,  # "110M"
    "google/vit-base-patch16-224-in21k": 86_389_248,  # ViT-B/16, with pooler ("86M")
    "facebook/deit-base-patch16-224": 86_389_248,  # DeiT-B = ViT-B/16 body (86,567,656 with its 1000-class head)
    "microsoft/swin-tiny-patch4-window7-224": 27_519_354,  # Swin-T without its head (28,288,354 with it)
    "microsoft/swin-base-patch4-window7-224-in22k": 86_743_224,  # Swin-B without its head (87,768,224 with 1k head)
    "openai/clip-vit-large-patch14": 427_616_513,  # CLIP ViT-L/14: vision 303,179,776 + text 123,060,480 + projections
    "resnet50": 25_557_032,  # torchvision, with fc
}


def _meta_model(name: str, width_scale: float = 1.0, **kwargs):
    from transformers import CONFIG_MAPPING, AutoModel

    arch = ARCHITECTURES[name]
    with torch.device("meta"):
        if arch["kind"] == "torchvision":
            import torchvision

            return getattr(torchvision.models, name)()
        config = scaled_config(arch["config"], width_scale)
        config.pop("architectures", None)
        return AutoModel.from_config(CONFIG_MAPPING[config.pop("model_type")](**config), **{**arch["count_with"], **kwargs})


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_recipe_encoder_has_a_built_in_architecture():
    from mmbench.recipes.loader import paper_names, recipe_names, resolve
    from mmbench.report.tables import plan

    configs = [resolve(recipe).model_config for recipe in recipe_names()]
    configs += [row.model_config for paper in paper_names() for row in plan(paper, None, smoke=False)]  # encoder swaps
    named = set()
    for config in configs:
        for key in ("text_encoder", "image_encoder"):
            value = getattr(config, key, None)
            if isinstance(value, str) and not value.startswith(("tiny-", "gt-")):
                named.add(value)
    assert named, "no encoder names found in the recipes"
    assert named <= set(ARCHITECTURES), f"recipes name encoders without a built-in architecture: {named - set(ARCHITECTURES)}"
    assert set(PUBLISHED) == set(ARCHITECTURES)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_equals_the_published_model(name):
    assert _count(_meta_model(name)) == PUBLISHED[name]


def test_roberta_without_pooler_is_what_the_methods_load():
    # the shared text loader drops the pooler of BERT/RoBERTa (mmbench.encoders.text)
    assert _count(_meta_model("roberta-base", add_pooling_layer=False)) == 124_055_040


@pytest.mark.parametrize("name", ["roberta-base", "openai/clip-vit-large-patch14", "microsoft/swin-base-patch4-window7-224-in22k"])
def test_reduced_width_keeps_heads_dividing_the_hidden_size(name):
    config = scaled_config(ARCHITECTURES[name]["config"], 1 / 16)
    for cfg in (config, config.get("text_config", {}), config.get("vision_config", {})):
        if "hidden_size" in cfg:
            assert cfg["hidden_size"] % cfg["num_attention_heads"] == 0
        if "vocab_size" in cfg:  # text states feed the methods' own 8- and 12-head layers (DTCA, ITM)
            assert cfg["hidden_size"] % 24 == 0
    assert 0 < _count(_meta_model(name, 1 / 16)) < PUBLISHED[name] / 20


@pytest.mark.parametrize("layout,pad,cls,sep", [(BERT_UNCASED, 0, 101, 102), (ROBERTA, 1, 0, 2), (CLIP_TOKENIZER, 49407, 49406, 49407)])
def test_offline_tokenizer_has_the_real_vocabulary_and_special_ids(layout, pad, cls, sep):
    from mmbench.rehearsal.tokenizer import offline_tokenizer

    tok = offline_tokenizer(layout)
    assert len(tok) == layout["vocab_size"]
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id) == (pad, cls, sep)
    ids = tok("Alice is here", "alice")["input_ids"]
    assert ids[0] == cls and ids[-1] == sep and max(ids) < layout["vocab_size"]
    if tok.unk_token_id != sep:  # CLIP's unknown token is its end-of-text
        assert tok.unk_token_id not in ids
    assert len(ids) >= len("aliceishere") + len("alice")  # one token per character at least


def test_widening_keeps_region_counts_and_reaches_2048(tmp_path):
    from mmbench.rehearsal.data import REGION_FEATURE_DIM, widen_feature_files

    np.save(tmp_path / "train_ims.npy", np.ones((3, 36, 64), dtype=np.float32))
    with open(tmp_path / "1.jpg.npz", "wb") as handle:
        np.savez(handle, x=np.ones((64, 100), dtype=np.float32), bbox=np.zeros((100, 4), dtype=np.float32), num_bbox=100)
    assert widen_feature_files(tmp_path) == 2
    assert np.load(tmp_path / "train_ims.npy").shape == (3, 36, REGION_FEATURE_DIM)
    with np.load(tmp_path / "1.jpg.npz") as npz:
        assert npz["x"].shape == (REGION_FEATURE_DIM, 100) and npz["bbox"].shape == (100, 4) and int(npz["num_bbox"]) == 100


def test_the_shared_loader_builds_random_weights_only_while_rehearsing(tmp_path):
    from mmbench.encoders.pretrained import random_weights_active
    from mmbench.encoders.text import load_text_encoder
    from mmbench.errors import WeightsNotFound
    from mmbench.rehearsal.weights import RandomWeights

    provider = RandomWeights(tmp_path, width_scale=1 / 16)
    with provider.active():
        assert random_weights_active()
        model, tokenizer = load_text_encoder("bert-base-uncased")
        with pytest.raises(WeightsNotFound, match="no built-in architecture"):
            load_text_encoder("someone/unknown-model")
    assert not random_weights_active()
    assert type(model).__name__ == "BertModel" and model.pooler is None  # the loader's own add_pooling_layer=False
    assert model.config.vocab_size == len(tokenizer) == 30522 and model.config.num_hidden_layers == 12
    assert provider.built == {"bert-base-uncased": {"init": "random", "width_scale": 1 / 16,
                                                    "parameters": sum(p.numel() for p in model.parameters())}}
