"""Every GPU figure the suite lacks, from one command on a GPU machine (issue 26):

    scripts/gpu_check.sh OUT_DIR                      # = make gpu-check OUT=OUT_DIR; cuda, paper sizes, ≤ 8 min
    scripts/gpu_check.sh --device cpu --tiny --out DIR   # the same parts at tiny sizes (in `make test`)

Parts, in order of value, each in its own time budget and each writing its own JSON (OUT/gpu-<part>.json,
rewritten after every benchmark run inside the part, so a later overrun or crash loses nothing before it):
  rehearse      `mmbench rehearse` of one recipe per paper at the recipe's batch size and precision: steady-state
                samples/s (warm-up excluded), peak memory, finite losses/gradients, every loss term non-zero,
                estimated epoch and paper-plan wall time;
  vs-official   `bench vs-official` itm / dtca / sppscl at paper widths, fp32 and bf16 (both sides alike), both
                sides in one process; `ours_fast_over_released_fp32` = our bf16 samples/s / the released fp32 run's;
  dcpa-eval     DCPA's all-pairs evaluation at COCO-5K size (5,000 × 25,000), fast path fp32 and bf16, score
                difference and whether R@1/5/10 agree;
  cmcs-upper    CMCS's upper step at real size (BERT-large-sized text encoder, CLIP-L-sized features);
  input         decoded-image store vs the per-batch PIL path, images/s.
Every benchmark runs in its own process group under a timeout (killed at the part's deadline); every
JSON carries the device name, torch / CUDA versions, git commit and date. The log of every run goes to
OUT/gpu-check.log; a one-screen summary is printed at the end (benchmarks/_gpu_figures.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _gpu_figures beside this file
from _gpu_figures import summary  # noqa: E402

SCHEMA = 1
# one recipe per paper, and a text baseline
RECIPES = ["itm/twitter15", "dtca/twitter15", "cmcs/twitter15", "sppscl/mvsa-single", "dcpa/flickr30k",
           "baselines/twitter15-roberta"]
# tiny: the cheapest recipe; every paper's recipe at 1/16 width runs in tests/shared/test_rehearse_recipes.py
TINY_RECIPES = ["baselines/twitter15-roberta"]


@dataclass
class Run:
    label: str
    argv: list[str]  # after `python`
    timeout: float  # this run's own cap (the part's deadline may cut it shorter)
    result_file: str | None = None  # the run writes its JSON here; None: the last JSON object it prints
    env: dict = field(default_factory=dict)


@dataclass
class Part:
    name: str
    budget: float  # seconds; parts run at cumulative deadlines, so a fast part leaves its rest to the next
    runs: list[Run]
    skip: str | None = None  # why the part cannot run here (recorded, not an error)


def plan(device: str, tiny: bool, official: Path) -> list[Part]:
    cli = ["-m", "mmbench.cli"]
    bench = str(ROOT / "benchmarks")
    rehearse = []
    for recipe in TINY_RECIPES if tiny else RECIPES:
        sizes = ["--steps", "1", "--warmup", "1", "--batch", "2", "--width-scale", "0.0625"] if tiny else ["--steps", "5", "--warmup", "2"]
        rehearse.append(Run(recipe, [*cli, "rehearse", recipe, "--device", device, *sizes, "--out", "{result}"],
                            60 if tiny else 75, "{result}"))
    papers = ["itm"] if tiny else ["itm", "dtca", "sppscl"]
    precisions = ["fp32"] if device == "cpu" else ["fp32", "bf16"]
    size = ["--size", "small", "--steps", "1", "--warmup", "0", "--repeats", "1"] if tiny else \
        ["--size", "paper", "--steps", "5", "--warmup", "2", "--repeats", "3"]
    vs = [Run(f"{paper} {precision}", [f"{bench}/vs_official.py", paper, "--device", device, "--precision", precision, *size,
                                       "--out", "{result}"], 60, "{result}", {"MMBENCH_OFFICIAL": str(official)})
          for paper in papers for precision in precisions]
    # 1/25 of COCO-5K first (a figure even if the full size overruns), then COCO-5K itself
    sizes = [("tiny", 10, 50)] if tiny else [("1k x 5k", 1000, 5000), ("coco-5k", 5000, 25000)]
    dcpa = [Run(f"{name} fast fp32 + bf16", [f"{bench}/dcpa_eval.py", "--device", device, "--images", str(images),
                                             "--captions", str(captions), "--bf16", "--skip-reference", "--out", "{result}"],
                60 if tiny else 110, "{result}") for name, images, captions in sizes]
    # explicit arguments (the benchmark's defaults change elsewhere): the recipe's batch 32, max_length 128, K = 60.
    # Tiny: the same benchmark on the recipe's smoke encoders (its --rehearsal keeps BERT-large's width and
    # vocabulary, 58M hypergradient parameters: minutes on a 2-core CPU even at 1 layer)
    cmcs = [Run("smoke-size upper step", [f"{bench}/cmcs_upper_step.py", "--device", device, "--neumann-terms", "1", "--steps", "1",
                                          "--warmup", "0", "--json", "{result}"], 60, "{result}") if tiny else
            Run("bert-large + clip-l upper step", [f"{bench}/cmcs_upper_step.py", "--rehearsal", "--device", device, "--layers", "24",
                                                   "--batch", "32", "--seq", "128", "--neumann-terms", "60"], 90)]
    images = ["--images", "8", "--batch", "4", "--epochs", "1", "--size", "64x48"] if tiny else \
        ["--images", "256", "--batch", "32", "--epochs", "2", "--workers", "4"]
    inputs = [Run(f"{paper} store vs PIL", [f"{bench}/input_pipeline.py", paper, "--device", device, *images, "--out", "{result}"],
                  60, "{result}") for paper in (["dtca"] if tiny else ["dtca", "cmcs"])]
    missing = None if official.is_dir() else f"released code not found at {official} (set MMBENCH_OFFICIAL)"
    # budgets (s) add up to 8 min on the GPU; a part that finishes early leaves its rest to the next ones
    return [Part("rehearse", 210, rehearse), Part("vs-official", 100, vs, missing), Part("dcpa-eval", 100, dcpa),
            Part("cmcs-upper", 45, cmcs), Part("input", 25, inputs)]


def environment(device: str, tiny: bool) -> dict:
    import torch

    cuda = device.startswith("cuda") and torch.cuda.is_available()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                                    text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", None
    return {"schema": SCHEMA, "device": device,
            "device_name": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.machine()}, {os.cpu_count()} cores)",
            "torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "python": platform.python_version(),
            "git_commit": commit or os.environ.get("MMBENCH_GIT_COMMIT") or "unknown", "git_dirty": dirty,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "tiny": tiny}


def last_json(text: str):
    """The last top-level JSON object a benchmark printed (one line or indented)."""
    lines = text.splitlines()
    for i in reversed(range(len(lines))):
        if lines[i].startswith("{"):
            for end in (i + 1, len(lines)):
                try:
                    return json.loads("\n".join(lines[i:end]))
                except json.JSONDecodeError:
                    continue
    return None


def execute(run: Run, deadline: float, log, scratch: Path, runs_left: int = 1) -> dict:
    """One benchmark in its own process group, killed after min(its timeout, a fair share of the part's time
    left: an equal part for it and each run after it, so one slow run cannot starve the rest)."""
    limit = min(run.timeout, (deadline - time.monotonic()) / runs_left)
    entry = {"label": run.label, "command": None, "status": None, "seconds": 0.0}
    if limit < 5:
        entry.update(status="skipped", error=f"no time left in the part's budget ({limit:.0f} s share)")
        return entry
    result = scratch / (re.sub(r"[^A-Za-z0-9]+", "-", run.label) + ".json")
    argv = [sys.executable, *(a.replace("{result}", str(result)) for a in run.argv)]
    entry["command"] = " ".join(argv[1:]).replace(str(ROOT) + "/", "")
    log.write(f"\n===== {run.label}: {entry['command']} (limit {limit:.0f} s)\n")
    log.flush()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **run.env}
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
        out.seek(0)
        text = out.read()
    log.write(text)
    log.flush()
    entry["seconds"] = round(time.monotonic() - started, 1)
    data = None
    if run.result_file and result.is_file():
        data = json.loads(result.read_text())
    elif run.result_file is None:
        data = last_json(text)
    entry["result"] = data
    if code is None:
        entry.update(status="timeout", error=f"killed after {limit:.0f} s")
    elif code != 0 or data is None:
        tail = [line for line in text.strip().splitlines() if line.strip()]
        entry.update(status="failed", returncode=code, error=tail[-1][:300] if tail else f"exit {code}")
    else:
        entry["status"] = "ok"
    return entry


def write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)  # a reader never sees half a file


def run_parts(parts: list[Part], out: Path, header: dict, budget_scale: float, log) -> list[dict]:
    started = time.monotonic()
    cumulative, written = 0.0, []
    with tempfile.TemporaryDirectory(prefix="mmbench-gpu-check-") as tmp:
        for part in parts:
            cumulative += part.budget * budget_scale
            deadline = started + cumulative
            data = {**header, "part": part.name, "budget_s": round(part.budget * budget_scale), "status": "running", "runs": []}
            path = out / f"gpu-{part.name}.json"
            if part.skip:
                data.update(status="skipped", reason=part.skip)
            else:
                for i, run in enumerate(part.runs):
                    write(path, data)
                    data["runs"].append(execute(run, deadline, log, Path(tmp), len(part.runs) - i))
                statuses = {r["status"] for r in data["runs"]}
                data["status"] = "ok" if statuses == {"ok"} else "failed" if "ok" not in statuses else "partial"
            data["seconds"] = round(sum(r["seconds"] for r in data["runs"]), 1)
            write(path, data)
            written.append(data)
            print(f"[gpu-check] {part.name}: {data['status']} ({data['seconds']} s) -> {path}", flush=True)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", help="output folder (or --out)")
    parser.add_argument("--out", dest="out_flag")
    parser.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, 1-2 steps: the code path in CI")
    parser.add_argument("--parts", nargs="+", default=None, help="only these parts")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="every part's budget × this")
    parser.add_argument("--official", default=os.environ.get("MMBENCH_OFFICIAL") or str(ROOT.parent / "shared" / "official"))
    args = parser.parse_args()
    folder = args.out_flag or args.out
    if not folder:
        parser.error("name the output folder: gpu_check.py OUT_DIR (or --out OUT_DIR)")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("[gpu-check] --device cuda but torch.cuda.is_available() is False; use --device cpu --tiny", file=sys.stderr)
        return 2
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    parts = plan(device, args.tiny, Path(args.official))
    if args.parts:
        unknown = set(args.parts) - {p.name for p in parts}
        if unknown:
            parser.error(f"--parts {' '.join(sorted(unknown))}: unknown (known: {' '.join(p.name for p in parts)})")
        parts = [p for p in parts if p.name in args.parts]
    header = environment(device, args.tiny)
    with open(out / "gpu-check.log", "a") as log:
        log.write(f"\n##### gpu-check {json.dumps(header)}\n")
        written = run_parts(parts, out, header, args.budget_scale, log)
    print(summary(written))
    return 0 if all(p["status"] in ("ok", "skipped") for p in written) else 1


if __name__ == "__main__":
    sys.exit(main())
