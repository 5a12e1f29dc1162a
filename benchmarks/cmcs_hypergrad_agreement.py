"""Agreement of CMCS's implicit hypergradient (eqs 13-14) with the unrolled finite-difference oracle
(mmbench/papers/cmcs/oracle.py) at the recipe's own values (issue 27), and of the readings it replaced.

For each case (a 768-d and a 1024-d head on LayerNorm-scale features, and a small transformer; each at
random init and mid-training; see mmbench/papers/cmcs/oracle_cases.py) and each hyper-parameter α, β:
the oracle runs the H lower steps of Algorithm 1 with φ ± ε; every reading is evaluated at θ_H on the
last lower batch. Reported per reading: the share of cases with the oracle's sign, the share within ×2
of its magnitude, and the median |estimate / oracle|. Acceptance for the shipped reading: ≥ 0.90 / ≥ 0.75.

    .venv/bin/python benchmarks/cmcs_hypergrad_agreement.py [--seeds 10] [--transformer-seeds 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def readings(recipe_lr: float, k: int) -> dict:
    """name -> (K, γ or None for 1/λ̂_max, damping); the first is the recipe's."""
    return {"recipe: lr-scaled, K+1 = H": (k, recipe_lr, "none"), "lr-scaled, K = 1 (K too small)": (1, recipe_lr, "none"),
            "lr-scaled, K = 60": (60, recipe_lr, "none"), "power 1/λ̂_max, K = 60 (old default)": (60, None, "none"),
            "power + min_eigen damping, K = 60": (60, None, "min_eigen")}


def main() -> None:
    import torch

    from mmbench.papers.cmcs.oracle import agreement, implicit_estimate, sgd_lower_steps, unrolled_hypergradient
    from mmbench.papers.cmcs.oracle_cases import head_case, transformer_case
    from mmbench.recipes.loader import resolve

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--transformer-seeds", type=int, default=2)
    parser.add_argument("--warm", type=int, default=200, help="Adam steps before the mid-training cases")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    resolved = resolve("cmcs/twitter15")
    cfg, lr = resolved.model_config, resolved.recipe.train.optimizers["main"].lr
    h, k = cfg.upper_every, cfg.neumann_terms
    assert cfg.neumann_scaling == "lr", "this benchmark's first reading is the shipped lr-scaled series"
    builders = {"head768": lambda s, w: head_case(s, d=768, h=h, warm=w), "head1024": lambda s, w: head_case(s, d=1024, h=h, warm=w),
                "transformer": lambda s, w: transformer_case(s, h=h, warm=w)}
    seeds = {"head768": range(args.seeds), "head1024": range(args.seeds), "transformer": range(args.transformer_seeds)}
    names = readings(lr, k)
    cases, started = [], time.time()
    for problem, build in builders.items():
        for seed in seeds[problem]:
            for warm in (0, args.warm if problem != "transformer" else 60):
                case = build(seed, warm)
                oracle = unrolled_hypergradient(case.theta, case.phi, case.lower_loss, case.dev_loss, case.batches, lr).tolist()
                theta_h = sgd_lower_steps(case.theta, case.phi, case.lower_loss, case.batches, lr)
                row = {"problem": problem, "seed": seed, "warm": warm, "oracle": oracle, "estimates": {}}
                for name, (kk, scale, damping) in names.items():
                    info: dict = {}
                    est = implicit_estimate(theta_h, case.phi, case.lower_loss, case.dev_loss, case.batches[-1], kk, scale, damping, info=info)
                    row["estimates"][name] = est.tolist()
                    if "lambda_min" in info:
                        row["lambda_min"], row["lambda_max"] = info["lambda_min"], info["lambda_max"]
                cases.append(row)
                print(problem, seed, warm, oracle, row["estimates"][next(iter(names))], flush=True)
    summary = {}
    for name in names:
        per = {}
        for problem in list(builders) + ["all"]:
            rows = [c for c in cases if problem in ("all", c["problem"])]
            est = [x for c in rows for x in c["estimates"][name]]
            orc = [x for c in rows for x in c["oracle"]]
            if not rows:
                continue
            stats = agreement(est, orc)
            stats["median_ratio"] = statistics.median(abs(e / o) for e, o in zip(est, orc) if o)
            per[problem] = stats
        summary[name] = per
    out = {"command": "python " + " ".join(["benchmarks/cmcs_hypergrad_agreement.py", *sys.argv[1:]]),
           "recipe": {"eta1": lr, "H": h, "K": k, "neumann_scaling": cfg.neumann_scaling, "neumann_damping": cfg.neumann_damping},
           "acceptance": {"sign": 0.9, "within_factor_2": 0.75}, "summary": summary, "cases": cases,
           "seconds": round(time.time() - started, 1)}
    from mmbench.paths import bench_results_dir

    path = Path(args.json or bench_results_dir() / "cmcs_hypergrad_agreement.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    for name, per in summary.items():
        print(f"{name:40s} " + "  ".join(f"{p}: sign {s['sign']:.2f} ×2 {s['within_factor']:.2f} med {s['median_ratio']:.3g}" for p, s in per.items()))
    print(path)


if __name__ == "__main__":
    main()
