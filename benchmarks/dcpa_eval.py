"""Pairs/second of DCPA's blocked all-pairs evaluator (random weights and features, paper sizes:
36 regions × 2048 → 256, 16 heads, BERT 768-d words).

    python benchmarks/dcpa_eval.py                      # CPU, small (100 images × 500 captions)
    python benchmarks/dcpa_eval.py --device cuda --images 5000 --captions 25000   # COCO 5K on a GPU

Writes benchmarks/results/dcpa_eval-<device>.json. The issue's goal: COCO 5K (125M pairs) in ≤ 5 min
on an H100, i.e. ≥ 417k pairs/s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mmbench.papers.dcpa.evaluate import blocked_all_pairs
from mmbench.papers.dcpa.model import DCPADims, DCPAModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--captions", type=int, default=500)
    parser.add_argument("--words", type=int, default=16, help="tokens per caption (Flickr30K BERT average ≈ 16)")
    parser.add_argument("--image-block", type=int, default=128)
    parser.add_argument("--caption-block", type=int, default=512)
    parser.add_argument("--stage", type=int, default=2, choices=(1, 2))
    parser.add_argument("--bf16", action="store_true", help="autocast bf16 (what training runs use on CUDA)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = DCPAModel(DCPADims()).to(device).eval()
    model.stage.fill_(args.stage)
    regions = torch.randn(args.images, 36, 2048)
    words = torch.randn(args.captions, args.words, 768)
    mask = torch.ones(args.captions, args.words, dtype=torch.bool)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    with torch.no_grad(), autocast:
        start = time.perf_counter()
        img = {}
        for i0 in range(0, args.images, args.image_block):
            for k, v in model.encode_images(regions[i0 : i0 + args.image_block].to(device)).items():
                img.setdefault(k, []).append(v)
        img = {k: torch.cat(v) for k, v in img.items()}

        def encode(c0, c1):
            return model.encode_captions(words[c0:c1].to(device), mask[c0:c1].to(device))

        def score(i0, i1, cap):
            return model.pair_scores({k: v[i0:i1] for k, v in img.items()}, cap)

        blocked_all_pairs(args.images, args.captions, encode, score, args.image_block, args.caption_block, progress=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    pairs = args.images * args.captions
    result = {"benchmark": "dcpa_eval", "device": str(device), "stage": args.stage, "images": args.images,
              "captions": args.captions, "words": args.words, "image_block": args.image_block,
              "caption_block": args.caption_block, "bf16": args.bf16, "pairs": pairs, "seconds": round(seconds, 3),
              "pairs_per_second": round(pairs / seconds, 1), "threads": torch.get_num_threads(),
              "coco5k_minutes_estimate": round(125_000_000 / (pairs / seconds) / 60, 2),
              "peak_gpu_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"dcpa_eval-{device.type}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
