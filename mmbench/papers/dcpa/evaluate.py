"""All-pairs scoring in blocks (images × captions), for attention-based matchers where every pair goes
through the network (COCO 5K: 5000 × 25000 = 125M pairs).

Memory is bounded by the block sizes: one caption block is encoded at a time, one image block × caption
block of pair activations exists at a time, and only the [N_images, N_captions] score matrices (float32,
on CPU) are kept whole. Works on CPU and GPU; a tqdm bar shows progress when asked.
"""

from __future__ import annotations

import time
from typing import Callable

import torch


def blocked_all_pairs(
    n_images: int,
    n_captions: int,
    encode_captions: Callable[[int, int], object],
    score_block: Callable[[int, int, object], tuple[torch.Tensor, ...]],
    image_block: int,
    caption_block: int,
    n_outputs: int = 2,
    progress: bool = False,
    desc: str = "pairs",
) -> tuple[torch.Tensor, ...]:
    """Fill `n_outputs` score matrices [n_images, n_captions].

    encode_captions(c0, c1) → whatever score_block needs for captions [c0, c1) (computed once per block);
    score_block(i0, i1, captions) → n_outputs tensors [i1 - i0, c1 - c0].
    """
    out = tuple(torch.empty(n_images, n_captions, dtype=torch.float32) for _ in range(n_outputs))
    n_blocks = -(-n_images // image_block) * -(-n_captions // caption_block)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_blocks, desc=desc, unit="block", leave=False)
    for c0 in range(0, n_captions, caption_block):
        c1 = min(n_captions, c0 + caption_block)
        captions = encode_captions(c0, c1)
        for i0 in range(0, n_images, image_block):
            i1 = min(n_images, i0 + image_block)
            for matrix, block in zip(out, score_block(i0, i1, captions)):
                matrix[i0:i1, c0:c1] = block.float().cpu()
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return out


def pairs_per_second(n_images: int, n_captions: int, run: Callable[[], object], device: torch.device) -> dict:
    """Time one call of `run` (synchronising CUDA) and report pairs/second."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {"pairs": n_images * n_captions, "seconds": round(seconds, 4), "pairs_per_second": n_images * n_captions / seconds}
