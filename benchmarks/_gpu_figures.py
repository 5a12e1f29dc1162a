"""The figures of a gpu-check (benchmarks/gpu_check.py), as the one-screen summary it prints and as the
README's "GPU check" table, which reads the committed benchmarks/results/gpu-*.json (CUDA, not tiny):

    python benchmarks/_gpu_figures.py            # the README table from benchmarks/results/gpu-*.json
    python benchmarks/_gpu_figures.py DIR        # the same from another folder (e.g. a fresh gpu-check)

A figure with no CUDA JSON behind it reads "not measured on a GPU".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NOT_MEASURED = "not measured on a GPU"
ROWS = [  # (part, key, README label): the fixed rows of the README table
    *[("rehearse", r, f"rehearse {r}") for r in ("itm/twitter15", "dtca/twitter15", "cmcs/twitter15", "sppscl/mvsa-single",
                                               "dcpa/flickr30k", "baselines/twitter15-roberta")],
    *[("vs-official", p, f"training step vs released code, {p} (goal ≥ 2×)") for p in ("itm", "dtca", "sppscl")],
    ("dcpa-eval", "coco-5k", "DCPA COCO-5K evaluation, 5,000 × 25,000 (goal ≤ 60 s)"),
    ("cmcs-upper", "upper", "CMCS upper step, BERT-large + CLIP-L shapes"),
    *[("input", p, f"input pipeline {p}: image store vs per-batch PIL") for p in ("dtca", "cmcs")],
]


def _hours(seconds) -> str:
    if seconds is None:
        return "?"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def _ok_runs(part: dict) -> list[dict]:
    return [r for r in part.get("runs", []) if r.get("result")]


def _rehearse(part: dict) -> dict[str, str]:
    out = {}
    for run in _ok_runs(part):
        r = run["result"]
        memory = r["memory"].get("peak_cuda_mb", r["memory"].get("peak_rss_mb"))
        kind = "CUDA" if "peak_cuda_mb" in r["memory"] else "RSS"
        estimate = r.get("estimate", {})
        checks = "ok" if r["ok"] else ("FAILED: " + ", ".join(
            [f"{k} not finite" for k, v in r["finite"].items() if not v] + [f"{k} stayed 0" for k in r["zero_loss_terms"]] +
            [f"{k} never stepped" for k in r["unstepped_optimizers"]]))
        out[run["label"]] = (f"{r['steady_state']['samples_per_s']} samples/s steady (batch {r['requested_batch']}, {r['precision']}), "
                             f"peak {memory} MB {kind}, epoch {_hours(estimate.get('epoch_seconds'))}, "
                             f"plan {'n/a (no paper.yaml)' if 'plan_error' in estimate else _hours(estimate.get('plan_seconds'))}; "
                             f"checks {checks}")
    return out


def _vs_official(part: dict) -> dict[str, str]:
    by_paper: dict[str, dict] = {}
    for run in _ok_runs(part):
        r = run["result"]
        by_paper.setdefault(r["paper"], {})[r["precision"]] = r
    out = {}
    for paper, runs in by_paper.items():
        texts = [f"{p} ×{r['ratio_ours_over_released']} ({r['ours_samples_per_s']} vs {r['released_samples_per_s']} samples/s)"
                 for p, r in runs.items()]
        if "fp32" in runs and "bf16" in runs:
            texts.append(f"our bf16 / released fp32 ×{runs['bf16']['ours_samples_per_s'] / runs['fp32']['released_samples_per_s']:.2f}")
        out[paper] = "; ".join(texts) + f" [size {next(iter(runs.values()))['size']}]"
    return out


def _dcpa(part: dict) -> dict[str, str]:
    """The largest size that finished (COCO-5K when it did)."""
    for run in sorted(_ok_runs(part), key=lambda run: -run["result"]["pairs"]):
        r = run["result"]
        paths = r["paths"]
        texts = [f"{name} {p['seconds']} s" for name, p in paths.items()]
        bf16 = paths.get("fast_bf16", {})
        if "same_recalls_as_fast" in bf16:
            texts.append(f"bf16 recalls equal fp32's: {'yes' if bf16['same_recalls_as_fast'] else 'NO'} "
                         f"(max score diff {bf16['max_abs_score_difference_vs_fast']:.2g})")
        if "peak_gpu_mib" in r:
            texts.append(f"peak {r['peak_gpu_mib']} MiB")
        return {"coco-5k": f"{r['images']} × {r['captions']}: " + ", ".join(texts)}
    return {}


def _cmcs(part: dict) -> dict[str, str]:
    for run in _ok_runs(part):
        r = run["result"]
        if "rows" in r:  # the benchmark's recipe mode (tiny): plain vs upper step on the smoke encoders
            return {"upper": "; ".join(f"{row['text_encoder']} K {row['K']}: plain {row['plain_step_s']:.3f} s, upper "
                                       f"{row['upper_step_s']:.3f} s (×{row['ratio']:.1f})" for row in r["rows"])}
        modes = [f"{m}: lower {r[m]['lower_s']:.2f} s, upper {r[m]['upper_s']:.2f} s, finite {r[m]['finite']}, "
                 f"|hypergrad| {r[m].get('hypergrad_norm')}" for m in ("train", "eval") if m in r]
        memory = f"peak {r['peak_mem_gib']:.1f} GiB" if "peak_mem_gib" in r else f"peak RSS {r.get('peak_rss_gib', 0):.1f} GiB"
        extra = f", attention {r['attention']}" if "attention" in r else ""
        return {"upper": f"{r['layers']} layers, batch {r['batch']}, seq {r['seq']}, K {r['K']}: " + "; ".join(modes) + f"; {memory}{extra}"}
    return {}


def _input(part: dict) -> dict[str, str]:
    return {run["result"]["paper"]: f"store {run['result']['store_images_per_s']} vs PIL {run['result']['pil_images_per_s']} images/s "
                                    f"(×{run['result']['ratio']})" for run in _ok_runs(part)}


FIGURES = {"rehearse": _rehearse, "vs-official": _vs_official, "dcpa-eval": _dcpa, "cmcs-upper": _cmcs, "input": _input}


def figures(part: dict) -> dict[str, str]:
    return FIGURES[part["part"]](part)


def summary(parts: list[dict]) -> str:
    """One screen: a line per part, a line per figure, a line per failed run."""
    if not parts:
        return "gpu-check: no part ran"
    head = parts[0]
    lines = [f"gpu-check on {head['device_name']} (torch {head['torch']}, CUDA {head['cuda']}, commit {head['git_commit'][:10]}, "
             f"{head['date']}{', TINY' if head['tiny'] else ''})"]
    for part in parts:
        lines.append(f"- {part['part']}: {part['status']} in {part.get('seconds', 0)} s" + (f" ({part['reason']})" if part.get("reason") else ""))
        for key, text in figures(part).items():
            lines.append(f"    {key}: {text}")
        for run in part.get("runs", []):
            if run["status"] != "ok":
                lines.append(f"    ! {run['label']}: {run['status']}: {run.get('error', '')}")
    return "\n".join(lines)


def readme_table(folder: Path) -> str:
    """The README rows from every CUDA, non-tiny gpu-*.json in folder (newest file wins per figure)."""
    found: dict[tuple[str, str], str] = {}
    for path in sorted(folder.glob("gpu-*.json"), key=lambda p: json.loads(p.read_text()).get("date", "")):
        part = json.loads(path.read_text())
        if part.get("tiny") or not str(part.get("device", "")).startswith("cuda"):
            continue
        for key, text in figures(part).items():
            found[(part["part"], key)] = f"{text} — {part['device_name']}, {part['date'][:10]}, `{path.name}`"
    lines = ["| GPU figure | measured |", "|---|---|"]
    lines += [f"| {label} | {found.get((part, key), NOT_MEASURED)} |" for part, key, label in ROWS]
    return "\n".join(lines)


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    print(readme_table(Path(sys.argv[1]) if len(sys.argv) > 1 else root / "benchmarks" / "results"))
