"""All-pairs scoring in blocks (images × captions), for attention-based matchers where every pair goes
through the network (COCO 5K: 5000 × 25000 = 125M pairs).

Memory is bounded by the block sizes: one caption block is encoded at a time, one image block × caption
block of pair activations exists at a time, and only the [N_images, N_captions] float32 score matrices
are kept whole. Two ways to run it, with the same results (tested):

- reference: captions in file order, every block copied to host memory as it is scored;
- fast (`caption_order` + `device`): caption blocks follow `caption_order` (shortest first, so a block is
  padded to a length close to its own captions' instead of the file's longest: Inter-PAM's cost grows
  with the padded length), the score matrices stay on `device` and go to the host once, in file order.

Precision (`eval_precision`): `fp32` (default) scores in float32 whatever autocast the caller is in (the
engine evaluates under the run's autocast: bf16 on CUDA) and without TF32, so ranks are those of fp32
on every device; `bf16` (opt-in, faster on GPUs) runs the transformer layers under a bf16 autocast while
the similarities, top-K and the W1/W2 weighting stay float32 (model.fp32_similarity): ranks may move by
bf16 rounding of the layers (tested).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Sequence

import torch

from mmbench.engine.throughput import Progress

PRECISIONS = ("fp32", "bf16")


@contextmanager
def eval_precision(precision: str, device: torch.device):
    """The numeric mode of an evaluation (see module docstring)."""
    if precision not in PRECISIONS:
        raise ValueError(f"eval precision {precision!r}: choose one of {PRECISIONS}")
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    matmul = torch.get_float32_matmul_precision()
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")  # no TF32 (10-bit significand) matmuls
    torch.backends.cudnn.allow_tf32 = False  # the phrase CNN's convolutions
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


def blocked_all_pairs(
    n_images: int,
    n_captions: int,
    encode_captions: Callable[[Sequence[int]], object],
    score_block: Callable[[int, int, object], tuple[torch.Tensor, ...]],
    image_block: int,
    caption_block: int,
    n_outputs: int = 2,
    caption_order: Sequence[int] | None = None,
    device: torch.device | None = None,
    progress: bool = False,
    desc: str = "pairs",
) -> tuple[torch.Tensor, ...]:
    """Fill `n_outputs` float32 score matrices [n_images, n_captions] (on the CPU, columns in file order).

    encode_captions(captions) → whatever score_block needs for these caption indices (once per block);
    score_block(i0, i1, captions) → n_outputs tensors [i1 - i0, len(captions)], any float dtype (a bf16
    block is stored in float32: rankings are read from the float32 matrix).
    """
    order = torch.arange(n_captions) if caption_order is None else torch.as_tensor(caption_order, dtype=torch.long)
    if sorted(order.tolist()) != list(range(n_captions)):
        raise ValueError(f"caption_order is not a permutation of the {n_captions} captions")
    where = torch.device("cpu") if device is None else device
    # column j of `out` holds caption order[j] until the final reordering
    out = tuple(torch.empty(n_images, n_captions, dtype=torch.float32, device=where) for _ in range(n_outputs))
    n_blocks = -(-n_images // image_block) * -(-n_captions // caption_block)
    bar, started, done, pairs = Progress(n_blocks, desc, log=lambda line: None, enabled=progress), time.perf_counter(), 0, 0
    for c0 in range(0, n_captions, caption_block):
        c1 = min(n_captions, c0 + caption_block)
        captions = encode_captions(order[c0:c1].tolist())
        for i0 in range(0, n_images, image_block):
            i1 = min(n_images, i0 + image_block)
            for matrix, block in zip(out, score_block(i0, i1, captions)):
                matrix[i0:i1, c0:c1] = block.to(where, torch.float32)  # reference: one host copy a block
            done, pairs = done + 1, pairs + (i1 - i0) * (c1 - c0)
            bar.update(done, pairs, time.perf_counter() - started)  # the rate it shows is pairs/s
    bar.close()
    if caption_order is None:
        return tuple(matrix.cpu() for matrix in out)
    file_order = torch.empty_like(order)
    file_order[order] = torch.arange(n_captions)
    return tuple(matrix[:, file_order.to(where)].cpu() for matrix in out)  # one copy to the host


def score_all_pairs(model, regions: Callable[[list[int]], torch.Tensor], captions, n_images: int, n_captions: int,
                    image_block: int, caption_block: int, fast: bool = True, device: torch.device | None = None,
                    pair_scores: Callable | None = None, progress: bool = False, desc: str = "pairs",
                    precision: str = "fp32") -> tuple[torch.Tensor, ...]:
    """(S_i2t, S_t2i) [n_images, n_captions] of a model with `encode_images(regions)`,
    `encode_captions(words, mask)` and `pair_scores(images, captions)` (DCPAModel). `regions(indices)`
    gives those images' region features; `captions` has `batch(indices, device) → (words, mask)` and
    `lengths()` (text.WordFeatures, gru.TokenIds). `fast`: length order + matrices on `device`.
    `precision`: `eval_precision` (fp32 by default, whatever autocast surrounds the call)."""
    device = torch.device("cpu") if device is None else device
    with eval_precision(precision, device):
        return _score_all_pairs(model, regions, captions, n_images, n_captions, image_block, caption_block, fast,
                                device, pair_scores, progress, desc)


def _score_all_pairs(model, regions, captions, n_images, n_captions, image_block, caption_block, fast, device,
                     pair_scores, progress, desc) -> tuple[torch.Tensor, ...]:
    pair_scores = model.pair_scores if pair_scores is None else pair_scores
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, n_images, image_block):  # each image encoded once, kept for every caption block
        for key, value in model.encode_images(regions(list(range(start, min(n_images, start + image_block))))).items():
            parts.setdefault(key, []).append(value)
    images = {key: torch.cat(values) for key, values in parts.items()}

    def encode_captions(indices: list[int]):
        return model.encode_captions(*captions.batch(indices, device))

    def score_block(i0: int, i1: int, encoded):
        return pair_scores({key: value[i0:i1] for key, value in images.items()}, encoded)

    order = length_order(captions.lengths()[:n_captions]) if fast else None
    return blocked_all_pairs(n_images, n_captions, encode_captions, score_block, image_block, caption_block,
                             caption_order=order, device=device if fast else None, progress=progress, desc=desc)


def length_order(lengths: Sequence[int]) -> list[int]:
    """Caption indices shortest first (stable: equal lengths keep file order)."""
    return sorted(range(len(lengths)), key=lambda c: lengths[c])

