"""Decoded-image store (mmbench.data.image_store): the same pixel_values as the encoder's own image
processor (ViT: resize; CLIP: shortest-edge resize + centre crop), content-keyed, a corrupt image fails
the build naming the file, blanks follow the caller's policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmbench.data.image_store import ImageStore
from mmbench.data.images import load_rgb
from mmbench.errors import DataError

# float32 rounding of values of magnitude ≲ 3 (normalised pixels): half an ulp at 4 is 2.4e-7
PROCESSOR_ROUNDING = 2.4e-7


def _processors():
    from transformers import CLIPImageProcessor, ViTImageProcessor

    return {
        "vit": ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3),
        "clip": CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
    }


def _images(folder, n: int = 7) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):  # odd sizes and aspect ratios, JPEG and PNG, one greyscale
        h, w = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(array).convert("L") if i == 3 else Image.fromarray(array)
        path = folder / (f"{i}.png" if i % 2 else f"{i}.jpg")
        image.save(path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("kind", ["vit", "clip"])
def test_store_pixels_equal_the_processor_output(tmp_path, kind):
    processor = _processors()[kind]
    paths = _images(tmp_path)
    store = ImageStore.open(paths, processor, root=tmp_path / "cache")
    order = [paths[5], paths[0], paths[3], paths[5]]  # any order, repeats
    expected = processor([load_rgb(p) for p in order], return_tensors="pt")["pixel_values"]
    got = store.batch(order)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert (got - expected).abs().max().item() <= PROCESSOR_ROUNDING
    assert store.batch(order, dtype=torch.float64).dtype == torch.float64
    # blanks: a black image through the processor, or the mean image (zeros after normalisation)
    black = processor([Image.new("RGB", (50, 40))], return_tensors="pt")["pixel_values"][0]
    mixed = store.batch([paths[1], None], blank="black")
    assert (mixed[1] - black).abs().max().item() <= PROCESSOR_ROUNDING
    assert torch.equal(store.batch([None, paths[1]], blank="zeros")[0], torch.zeros_like(black))


def test_store_is_built_once_and_rebuilt_when_an_image_or_the_processor_changes(tmp_path):
    processor = _processors()["vit"]
    paths = _images(tmp_path, 3)
    cache = tmp_path / "cache"
    ImageStore.open(paths, processor, root=cache)
    assert len(list((cache / "decoded-images").iterdir())) == 1
    ImageStore.open(list(reversed(paths)), processor, root=cache)  # same files: the same store
    assert len(list((cache / "decoded-images").iterdir())) == 1
    Image.new("RGB", (30, 30), (200, 10, 10)).save(paths[0])  # replaced image: a new store with its pixels
    store = ImageStore.open(paths, processor, root=cache)
    assert len(list((cache / "decoded-images").iterdir())) == 2
    assert store.uint8([paths[0]])[0][0, 0, 0, 0].item() == 200
    from transformers import ViTImageProcessor

    ImageStore.open(paths, ViTImageProcessor(size={"height": 16, "width": 16}), root=cache)
    assert len(list((cache / "decoded-images").iterdir())) == 3


def test_a_corrupt_image_fails_the_build_naming_the_file(tmp_path):
    paths = _images(tmp_path, 3)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(Image.open(paths[0]).tobytes()[:200])  # not an image file
    with pytest.raises(DataError, match="broken.jpg: cannot decode image"):
        ImageStore.open([*paths, str(bad)], _processors()["vit"], root=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("meta.json"))  # nothing half-built is left to read
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(open(paths[0], "rb").read()[:300])
    with pytest.raises(DataError, match="truncated.jpg"):
        ImageStore.open([*paths, str(truncated)], _processors()["vit"], root=tmp_path / "cache")
