"""How often Algorithm 1's L_clm step runs, per threshold α and class prior, at the paper's sizes.

    .venv/bin/python benchmarks/sppscl_alpha_prior.py [--steps 40] [--out benchmarks/results/sppscl-alpha-prior-cpu.json]

The paper variant's heads at D = 32, B = 64 (full widths, AdamW at Table 2's MVSA-S lr) trained by the
method's own `train_step` on frozen-encoder-like features (tests/papers/sppscl/test_sppscl_mechanism.py,
whose `inter_step_fraction` this calls), labels drawn from each prior. Why it matters: the condition
c < α·c_mask compares c (pairs below the mean diagonal similarity) with α times the number of same-label
pairs, B²·Σ p_k², so the same α fires at a different rate on each dataset; and a LOWER α fires LESS,
the opposite of the paper's text on Figure 5 (recipes/sppscl/paper.yaml, figure5 notes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PRIORS = {  # training-split label counts (MVSA-Multiple: its published test counts)
    "uniform-3": (1, 1, 1), "mvsa-single": (2147, 376, 1088), "mvsa-multiple": (1131, 440, 129), "hfm": (11174, 8642)}
ALPHAS = {"1/3": 1 / 3, "2/3": 2 / 3, "1": 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sppscl-alpha-prior-cpu.json")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests" / "papers" / "sppscl"))
    from test_sppscl_mechanism import inter_step_fraction

    torch.set_num_threads(1)
    rows = []
    for prior_name, counts in PRIORS.items():
        prior = torch.tensor(counts, dtype=torch.float64)
        prior = prior / prior.sum()
        for alpha_name, alpha in ALPHAS.items():
            fraction = inter_step_fraction(prior=prior, steps=args.steps, alpha=alpha)
            row = {"prior": prior_name, "same_label_share": round(float((prior**2).sum()), 4), "alpha": alpha_name,
                   "steps": args.steps, "l_clm_step_fraction": fraction}
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.write_text(json.dumps({"command": "benchmarks/sppscl_alpha_prior.py --steps " + str(args.steps),
                                    "device": "cpu", "B": 64, "D": 32, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
