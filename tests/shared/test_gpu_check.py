"""The GPU-slot command (scripts/gpu_check.sh, benchmarks/gpu_check.py) cannot rot: its CPU tiny mode runs
every part through the same code path as on a GPU and writes the same JSON schema; a part that overruns
is killed and recorded without losing the others; rehearse fails a loss term that stays 0; the README's
GPU table is what benchmarks/results/gpu-*.json says (or "not measured on a GPU")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _gpu_figures  # noqa: E402
import gpu_check  # noqa: E402

HEADER = {"schema", "part", "device", "device_name", "torch", "cuda", "cuda_available", "python", "git_commit", "date",
          "tiny", "status", "budget_s", "seconds", "runs"}
PARTS = ["rehearse", "vs-official", "dcpa-eval", "cmcs-upper", "input"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    # MMBENCH_WHEELS=none: this venv's own packages, even where `make gpu-wheels` left the cp312 wheels in .whl/
    env = {**os.environ, "PYTHON": sys.executable, "MMBENCH_THREADS": "1", "MMBENCH_WHEELS": "none"}
    started = time.monotonic()
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu", "--tiny", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    return out, done, time.monotonic() - started


@pytest.mark.slow  # one tiny run of every part, ~1 min on 2 cores: the only end-to-end check of the GPU command
def test_tiny_mode_writes_every_part_with_the_gpu_schema(tiny):
    out, done, seconds = tiny
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([f"gpu-{p}.json" for p in PARTS] + ["gpu-check.log"])
    for name in PARTS:
        part = json.loads((out / f"gpu-{name}.json").read_text())
        assert HEADER <= part.keys() and part["part"] == name and part["schema"] == gpu_check.SCHEMA
        assert part["device"] == "cpu" and part["device_name"].startswith("cpu") and part["tiny"] is True
        assert part["torch"] and part["git_commit"] and part["date"][:2] == "20"
        if part["status"] == "skipped":  # only the released-code comparison, only where the released code is absent
            assert name == "vs-official" and "released code not found" in part["reason"]
            assert not Path(os.environ.get("MMBENCH_OFFICIAL") or ROOT.parent / "shared" / "official").is_dir()
            continue
        assert part["status"] == "ok", part
        for run in part["runs"]:
            assert run["status"] == "ok" and run["result"] and run["command"] and run["seconds"] > 0
        assert _gpu_figures.figures(part), name  # every part yields its summary figures
        assert f"- {name}: ok" in done.stdout
    rehearsal = json.loads((out / "gpu-rehearse.json").read_text())["runs"][0]["result"]
    assert rehearsal["ok"] and rehearsal["zero_loss_terms"] == [] and "loss" in rehearsal["loss_terms"]
    assert rehearsal["steady_state"]["warmup_batches"] == 1 and rehearsal["steady_state"]["samples_per_s"] > 0
    assert rehearsal["estimate"]["epoch_seconds"] > 0 and rehearsal["estimate"]["train_examples"] == 3179
    assert "gpu-check on cpu" in done.stdout and "TINY" in done.stdout
    print(f"tiny gpu-check: {seconds:.0f} s")


def test_a_run_over_its_time_is_killed_and_the_next_still_runs(tmp_path):
    sleeper = gpu_check.Run("sleeps", ["-c", "import time; print('started', flush=True); time.sleep(60)"], 60)
    printer = gpu_check.Run("prints", ["-c", "import json; print('noise'); print(json.dumps({'x': 1}, indent=1))"], 60)
    failing = gpu_check.Run("fails", ["-c", "raise SystemExit('boom')"], 60)
    parts = [gpu_check.Part("slow", 1, [sleeper, sleeper]), gpu_check.Part("fast", 1, [printer, failing]),
             gpu_check.Part("absent", 1, [printer], skip="released code not found")]
    header = {"schema": 1, "device": "cpu"}
    started = time.monotonic()
    with open(tmp_path / "gpu-check.log", "w") as log:
        written = gpu_check.run_parts(parts, tmp_path, header, 15.0, log)  # budgets 15 s each
    assert time.monotonic() - started < 45  # the sleepers (60 s) were killed within 15 s
    slow, fast, absent = (json.loads((tmp_path / f"gpu-{n}.json").read_text()) for n in ("slow", "fast", "absent"))
    assert slow["status"] == "failed" and [r["status"] for r in slow["runs"]] == ["timeout", "timeout"]
    assert slow["runs"][0]["seconds"] < 10 and slow["runs"][1]["seconds"] >= 5  # a fair share: the first cannot starve the second
    assert fast["status"] == "partial" and [r["status"] for r in fast["runs"]] == ["ok", "failed"]
    assert fast["runs"][0]["result"] == {"x": 1} and fast["runs"][1]["error"] == "boom"
    assert absent["status"] == "skipped" and absent["runs"] == []
    assert "started" in (tmp_path / "gpu-check.log").read_text() and [w["part"] for w in written] == ["slow", "fast", "absent"]


def test_loss_terms_that_stay_zero_are_named():
    from mmbench.rehearsal.run import LOSS_TERM, LossTerms, steady_state

    assert all(LOSS_TERM.search(k) for k in ("loss", "text_loss", "loss_re", "ce", "l_clm", "dev_loss"))
    assert not any(LOSS_TERM.search(k) for k in ("lr", "stage", "inter_step_fraction", "hypergrad_norm", "closs_weight"))
    terms = LossTerms()
    terms.update({"loss": 1.0, "ot_loss": 0.0, "lr": 0.0})
    terms.update({"loss": 0.5, "ot_loss": 0.0, "l_clm": 0.0})
    terms.update({"l_clm": 2.0})
    assert terms.zero() == ["ot_loss"] and sorted(terms.nonzero) == ["l_clm", "loss", "ot_loss"]
    state = steady_state([(4, 10.0), (4, 1.0), (2, 1.0)], warmup=1)
    assert state == {"warmup_batches": 1, "batches": 2, "samples_per_s": 3.0, "seconds_per_batch": 1.0}
    assert steady_state([(4, 1.0)], warmup=1)["samples_per_s"] is None


def test_readme_gpu_table_is_what_the_committed_gpu_results_say():
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- gpu-table:start -->\n", "<!-- gpu-table:end -->"
    block = readme.split(start, 1)[1].split(end, 1)[0].strip()
    assert block == _gpu_figures.readme_table(ROOT / "benchmarks" / "results"), \
        "README GPU table out of date: python benchmarks/_gpu_figures.py"
    if not list((ROOT / "benchmarks" / "results").glob("gpu-*.json")):
        assert block.count(_gpu_figures.NOT_MEASURED) == len(_gpu_figures.ROWS)


def test_readme_table_reads_a_cuda_result_and_ignores_tiny_ones(tmp_path):
    part = {"schema": 1, "part": "input", "device": "cuda", "device_name": "NVIDIA H200", "date": "2027-01-01T00:00:00+00:00",
            "tiny": False, "runs": [{"label": "dtca", "status": "ok", "result": {
                "paper": "dtca", "store_images_per_s": 900.0, "pil_images_per_s": 90.0, "ratio": 10.0}}]}
    (tmp_path / "gpu-input.json").write_text(json.dumps(part))
    (tmp_path / "gpu-rehearse.json").write_text(json.dumps({**part, "part": "rehearse", "tiny": True}))
    table = _gpu_figures.readme_table(tmp_path)
    assert "| input pipeline dtca: image store vs per-batch PIL | store 900.0 vs PIL 90.0 images/s (×10.0) — NVIDIA H200" in table
    assert table.count(_gpu_figures.NOT_MEASURED) == len(_gpu_figures.ROWS) - 1
