"""Throughput of one ITM alternating step (aux ITM batch + main Twitter batch, forward + backward +
AdamW), at real size (roberta-base shapes, 100 × 2048 regions, batch 32, 128 tokens) or small size.

The text encoder is random-init from `RobertaConfig()` (roberta-base's shapes), so no download is
needed; speed does not depend on the weights.

    .venv/bin/python benchmarks/itm_step.py --size small                 # CPU, seconds
    .venv/bin/python benchmarks/itm_step.py --size real --device cuda    # bf16 autocast on CUDA
Prints one JSON line (and writes it to --out if given).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mmbench.papers.itm.method import ITMConfig
from mmbench.papers.itm.model import ITMNetwork, alignment_loss, relevance_loss, sentiment_loss

SIZES = {
    "small": dict(hidden=64, layers=2, heads=2, ffn=128, region_dim=256, batch=8, length=32),
    "real": dict(hidden=768, layers=12, heads=12, ffn=3072, region_dim=2048, batch=32, length=128),
}


def build(size: dict, variant: str) -> tuple[torch.nn.Module, ITMConfig]:
    from transformers import RobertaConfig, RobertaModel

    text = RobertaModel(RobertaConfig(hidden_size=size["hidden"], num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                                      intermediate_size=size["ffn"]), add_pooling_layer=False)
    official = dict(relevance_head="softmax2", alignment_distribution="softmax_mean_logits", kl_normaliser="batch",
                    fine_query="pooler", classifier_head="pooler") if variant == "official" else {}
    cfg = ITMConfig(text_encoder="roberta-base", region_dim=size["region_dim"], num_heads=size["heads"], ffn_dim=size["ffn"], **official)
    return ITMNetwork(text, cfg), cfg


def batch(size: dict, device: torch.device, related: bool) -> dict:
    b, n = size["batch"], size["length"]
    target = torch.zeros(b, 100, device=device)
    target[:, :3] = 1 / 3
    return {"input_ids": torch.randint(5, 50000 if size["hidden"] == 768 else 1000, (b, n), device=device),
            "attention_mask": torch.ones(b, n, dtype=torch.long, device=device),
            "regions": torch.rand(b, 100, size["region_dim"], device=device),
            "labels": torch.randint(0, 3, (b,), device=device),
            "relation": torch.randint(0, 2, (b,), device=device) if related else torch.full((b,), -1, device=device),
            "alignment": target}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", choices=["paper", "official"], default="paper")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    parser.add_argument("--out")
    args = parser.parse_args()
    device, size = torch.device(args.device), SIZES[args.size]
    torch.manual_seed(0)
    model, cfg = build(size, args.variant)
    model.to(device).train()
    opts = {n: torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01) for n, lr in (("aux", 1e-6), ("main", 1e-5))}
    use_bf16 = device.type == "cuda" and not args.fp32
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else torch.autograd.profiler.record_function
    aux, main_batch = batch(size, device, True), batch(size, device, False)

    def step():
        with (autocast() if use_bf16 else torch.enable_grad()):
            out = model(aux["input_ids"], aux["attention_mask"], aux["regions"])
        loss = relevance_loss(out["relevance_logits"], aux["relation"], cfg.relevance_head) \
            + 0.5 * alignment_loss(out["alignment"], aux["alignment"], aux["relation"], cfg.kl_normaliser)  # eq 10 (aux)
        loss.backward()
        opts["aux"].step()
        opts["aux"].zero_grad(set_to_none=True)
        with (autocast() if use_bf16 else torch.enable_grad()):
            out = model(main_batch["input_ids"], main_batch["attention_mask"], main_batch["regions"])
        loss = sentiment_loss(out["logits"], main_batch["labels"])  # eq 9
        loss.backward()
        opts["main"].step()
        opts["main"].zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    result = {"benchmark": "itm_step", "size": args.size, "variant": args.variant, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "precision": "bf16-autocast" if use_bf16 else "fp32", "batch": size["batch"], "length": size["length"],
              "seconds_per_alternating_step": round(seconds, 4),
              "examples_per_second": round(2 * size["batch"] / seconds, 1),
              "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
              "final_loss": round(loss, 4), "torch": torch.__version__}
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write(line + "\n")


if __name__ == "__main__":
    main()
