"""Per-epoch training time of SPP-SCL with the frozen-feature cache vs live frozen encoders.

    .venv/bin/python benchmarks/sppscl_cache.py                     # CPU, smoke recipe (tiny encoders, synthetic data)
    .venv/bin/python benchmarks/sppscl_cache.py --device cuda --full --dataset mvsa-single --epochs 3
        # real ResNet-50 + BERT-base on a prepared dataset (needs the weights and the images)

Both runs use the paper variant; only `model.feature_cache` differs (the uncached run keeps the
encoders in eval mode, so both compute the same features). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def run(dataset: str, cached: bool, epochs: int, device: str | None, full: bool, extra: list[str]) -> dict:
    from mmbench.engine.trainer import fit
    from mmbench.recipes.loader import resolve

    overrides = [f"model.feature_cache={str(cached).lower()}", f"train.epochs={epochs}", "train.seeds=[0]", *extra]
    resolved = resolve(f"sppscl/{dataset}", overrides, smoke=not full)
    started = time.time()
    result = fit(resolved, seed=0, device=device, log=lambda _: None)
    log = [json.loads(line) for line in (Path(result["run_dir"]) / "log.jsonl").read_text().splitlines()]
    seconds = [row["seconds"] for row in log]
    return {"cached": cached, "epoch_seconds": seconds, "median_epoch_s": statistics.median(seconds),
            "total_s": round(time.time() - started, 2), "test_accuracy": round(result["metrics"]["test"]["accuracy"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mvsa-single")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: what the engine picks)")
    parser.add_argument("--full", action="store_true", help="the real recipe instead of its smoke version")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--set", action="append", default=[], help="extra recipe overrides")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if "MMBENCH_DATA" not in os.environ or not args.full:
        scratch = tempfile.mkdtemp(prefix="sppscl-bench-")
        os.environ.setdefault("MMBENCH_RUNS", scratch + "/runs")
        if not args.full:
            os.environ["MMBENCH_DATA"] = scratch + "/data"
    # warm the cache first so that the cached run's epochs (not its one-off build) are measured
    cached = run(args.dataset, True, args.epochs, args.device, args.full, args.set)
    live = run(args.dataset, False, args.epochs, args.device, args.full, args.set)
    print(json.dumps({"dataset": args.dataset, "device": args.device or "auto", "full": args.full, "cached": cached,
                      "uncached": live, "speedup": round(live["median_epoch_s"] / max(cached["median_epoch_s"], 1e-9), 2)}))


if __name__ == "__main__":
    main()
