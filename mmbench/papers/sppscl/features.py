"""SPP-SCL's frozen encoders and their feature cache.

Image: ResNet-50 layer-4 map [2048, 7, 7] after Resize(256) + CenterCrop(224) + ImageNet
normalisation (released code); a ViT's patch tokens reshaped to a map for the ViT baseline; `tiny-cnn`
and `tiny-vit` for tests. Text: BERT's hidden states of the last L layers for every token of the
`[CLS] words [SEP]` sequence; `tiny-bert-4l` is a 4-layer random BERT for tests.

The cache (`mmbench.data.feature_cache`) stores text as a ragged array (one row per token, examples
back to back; offsets follow from the tokenizer) and images as one map per example. Its key covers
everything that changes the features; see `text_cache_key` / `image_cache_key`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmbench.data.collate import pad_sequences
from mmbench.data.feature_cache import FeatureCache
from mmbench.data.images import safe_image_path
from mmbench.errors import DataError, WeightsNotFound

FEATURE_VERSION = 1
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TINY_IMAGE = {"tiny-cnn", "tiny-vit"}


# -- encoders ----------------------------------------------------------------------------------
class ResNetMap(nn.Module):
    """torchvision ResNet up to layer 4 (the map before global average pooling)."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*[m for name, m in resnet.named_children() if name not in ("avgpool", "fc")])
        self.out_channels = resnet.fc.in_features

    def forward(self, pixels):
        return self.body(pixels)


class ViTMap(nn.Module):
    """A HF ViT's patch tokens as a [B, H, g, g] map."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit, self.out_channels = vit, vit.config.hidden_size

    def forward(self, pixels):
        tokens = self.vit(pixel_values=pixels).last_hidden_state[:, 1:]
        grid = int(round(tokens.shape[1] ** 0.5))
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid, grid)


class TinyCNN(nn.Module):
    """A three-conv stand-in for ResNet-50 (32×32 → [B, 32, 4, 4])."""

    out_channels = 32

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, 2, 1))

    def forward(self, pixels):
        return self.body(pixels)


def load_image_encoder(name: str, weights: str | None = None) -> nn.Module:
    if name == "tiny-cnn":
        return TinyCNN()
    if name == "tiny-vit":
        from mmbench.encoders.image import load_image_encoder as load_preset

        return ViTMap(load_preset("tiny-vit")[0])
    if name.startswith("resnet"):
        import torchvision

        model = getattr(torchvision.models, name)()
        from mmbench.encoders.pretrained import random_weights_active

        if random_weights_active():  # `mmbench rehearse`: the real architecture, random weights
            return ResNetMap(model)
        try:
            if weights:
                state = torch.load(weights, map_location="cpu", weights_only=True)
            else:
                enum = torchvision.models.get_model_weights(name).IMAGENET1K_V1
                state = torch.hub.load_state_dict_from_url(enum.url, map_location="cpu", progress=False)
        except Exception as exc:  # offline download, missing file
            raise WeightsNotFound(
                f"model.image_encoder={name}: ImageNet weights not available ({type(exc).__name__}); put torchvision's "
                f"{name} IMAGENET1K_V1 file under $TORCH_HOME/hub/checkpoints or pass --set model.image_weights=/path/to.pth"
            ) from None
        model.load_state_dict(state)
        return ResNetMap(model)
    from transformers import ViTModel

    from mmbench.encoders.pretrained import load_or_explain

    return ViTMap(load_or_explain(name, "image_encoder",
                                  lambda source: ViTModel.from_pretrained(source, dtype=torch.float32, add_pooling_layer=False)))


def load_text_encoder_4l(name: str):
    """(model, tokenizer); `tiny-bert-4l` is a random 4-layer BERT so that 'the last four layers' exist in tests."""
    if name == "tiny-bert-4l":
        from transformers import BertConfig, BertModel

        from mmbench.encoders.tiny import TINY_HIDDEN, tiny_tokenizer, tiny_vocab

        config = BertConfig(vocab_size=len(tiny_vocab()), hidden_size=TINY_HIDDEN, num_hidden_layers=4, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=256)
        return BertModel(config, add_pooling_layer=False), tiny_tokenizer("bert")
    from mmbench.encoders.text import load_text_encoder

    return load_text_encoder(name)


def last_text_layers(text_model: nn.Module | None, k: int) -> nn.ModuleList:
    """BERT's last k transformer layers (layers 9-12 of BERT-base for k = 4)."""
    layers = getattr(getattr(text_model, "encoder", None), "layer", None)
    if layers is None or not 1 <= k <= len(layers):
        raise DataError(f"model.text_trained_layers={k}: the text encoder has {0 if layers is None else len(layers)} "
                        "BERT-style layers to train")
    return nn.ModuleList(list(layers)[-k:])


def image_transform(resize: int, crop: int):
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop), transforms.ToTensor(),
                               transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class FrozenExtractor(nn.Module):
    """The frozen encoders: text → (hidden states of the last `layers` layers), image → map."""

    def __init__(self, text_model: nn.Module | None, image_model: nn.Module | None, layers: int):
        super().__init__()
        self.text_model, self.image_model, self.layers = text_model, image_model, layers

    def text_states(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **kwargs)
        if len(out.hidden_states) - 1 < self.layers:
            raise DataError(f"text encoder has {len(out.hidden_states) - 1} layers; model.encoder_layers={self.layers}")
        return torch.stack(out.hidden_states[-self.layers:], dim=1)  # [B, L, T, H]

    def forward(self, batch: dict) -> dict:
        """Live features in the heads' layout. `word_mask` marks the positions the heads read: the real
        word tokens (1..len-2, paper) or the fixed slice 1..N of the padded sequence (released code)."""
        features = {}
        if self.text_model is not None:
            states = self.text_states(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            features.update(cls=states[:, :, 0], tokens=states[:, :, 1:-1], token_mask=batch["word_mask"][:, 1:-1].to(states.dtype))
        if self.image_model is not None:
            features["image_map"] = self.image_model(batch["pixels"])
        return features


def weights_digest(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def tokenizer_digest(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    blob = json.dumps([type(tokenizer).__name__, vocab, tokenizer.do_lower_case if hasattr(tokenizer, "do_lower_case") else None])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def rows_digest(rows) -> str:
    return hashlib.sha256(json.dumps([[r["id"], r["text"]] for r in rows]).encode()).hexdigest()[:16]


def images_fingerprint(root: Path, rows) -> str:
    """Size and mtime of each image file (missing ones as None): a changed image makes a new cache."""
    stats = []
    for row in rows:
        path = safe_image_path(root, row["image_id"])
        stat = path.stat() if path.exists() else None
        stats.append([row["image_id"], stat.st_size if stat else None, stat.st_mtime_ns if stat else None])
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


# -- images on disk ----------------------------------------------------------------------------
def load_image(root: Path, image_id: str, missing: str, errors: str):
    """A PIL RGB image, or None when the policy says to blank it (missing file / corrupt JPEG)."""
    from PIL import ImageFile, UnidentifiedImageError

    from mmbench.data.images import open_image, resolve_image

    path = safe_image_path(root, image_id)
    if not path.exists():
        if missing == "blank":
            return None
        path = resolve_image(root, image_id, missing)
    ImageFile.LOAD_TRUNCATED_IMAGES = errors == "load_truncated"  # released code sets it to True
    try:
        with open_image(path) as image:  # a header claiming too many pixels is refused before decoding
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        if errors == "blank":
            return None
        raise DataError(f"{path}: cannot decode image ({exc}); set model.image_errors=load_truncated or blank") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def pixel_batch(root: Path, image_ids: list[str], transform, crop: int, missing: str, errors: str):
    """[B, 3, crop, crop] pixels and a 0/1 `ok` flag per image (0 = blanked by the policy: zeros)."""
    pixels, ok = torch.zeros(len(image_ids), 3, crop, crop), torch.ones(len(image_ids), dtype=torch.uint8)
    for i, image_id in enumerate(image_ids):
        image = load_image(root, image_id, missing, errors)
        if image is None:
            ok[i] = 0
        else:
            pixels[i] = transform(image)
    return pixels, ok


# -- the cache -----------------------------------------------------------------------------------
def text_cache(key: dict, lengths: list[int], hidden: int, layers: int, dtype: str, extractor: FrozenExtractor,
               encoded: list[dict], device, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The ragged token-state store [Σ lengths, L, H] (built once) and each example's offset."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    cache = FeatureCache(key, name="sppscl-text")
    if not cache.complete:
        def batches():
            for start in range(0, len(encoded), batch_size):
                chunk = encoded[start : start + batch_size]
                ids, mask = pad_sequences([e["input_ids"] for e in chunk])
                with torch.no_grad():
                    states = extractor.text_states(ids.to(device), mask.to(device)).float().cpu().numpy()
                rows = np.concatenate([states[i, :, : len(e["input_ids"])].transpose(1, 0, 2) for i, e in enumerate(chunk)])
                yield int(offsets[start]), {"states": rows.astype(dtype)}

        cache.build(int(offsets[-1]), {"states": ((layers, hidden), dtype)}, batches())
    states = cache.open()["states"]
    if len(states) != offsets[-1]:
        raise DataError(f"{cache.dir}: {len(states)} token rows, the tokenizer gives {offsets[-1]}")
    return states, offsets


def image_cache(key: dict, n: int, shape: tuple, dtype: str, extractor: FrozenExtractor, loader, device,
                batch_size: int = 32) -> dict[str, np.ndarray]:
    """The per-example image maps [n, C, h, w] and `ok` flags; `loader(start, stop)` gives pixels + ok."""
    cache = FeatureCache(key, name="sppscl-image")
    if not cache.complete:
        def batches():
            for start in range(0, n, batch_size):
                pixels, ok = loader(start, min(n, start + batch_size))
                with torch.no_grad():
                    maps = extractor.image_model(pixels.to(device)).float().cpu().numpy()
                yield start, {"map": maps.astype(dtype), "ok": ok.numpy()}

        cache.build(n, {"map": (tuple(shape), dtype), "ok": ((), "uint8")}, batches())
    return cache.open()
