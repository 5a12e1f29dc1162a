"""`mmbench bench vs-official PAPER`: the released training step and ours, same sizes and batch, timed in one run.

With every dropout off, the two sides must give the same loss at each of three steps (same weights, same
batch, each with its own optimiser and loop), so the samples/s compared are those of the same training.
The command writes one JSON with samples/s of both and the ratio. Needs the released code in
../shared/official (skipped without it)."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import vs_official  # noqa: E402

needs_official = pytest.mark.skipif(not vs_official.OFFICIAL.is_dir(), reason=f"{vs_official.OFFICIAL}: released code absent")


@needs_official
@pytest.mark.parametrize("paper", sorted(vs_official.PAPERS))
def test_both_sides_train_the_same_model_on_the_same_batch(paper):
    torch.set_num_threads(1)
    build, sizes = vs_official.PAPERS[paper]
    steps = build(sizes["small"], torch.device("cpu"), nullcontext)
    vs_official.without_dropout(*steps["models"])
    released = [steps["released"]() for _ in range(3)]
    ours = [steps["ours"]() for _ in range(3)]
    assert released[0] != released[2]  # the weights moved
    assert ours == pytest.approx(released, rel=1e-5, abs=1e-5)


@needs_official
def test_the_command_prints_both_samples_per_s_and_the_ratio(tmp_path):
    out = tmp_path / "vs-official-dtca-cpu.json"
    done = subprocess.run([str(Path(sys.executable).parent / "mmbench"), "bench", "vs-official", "dtca", "--steps", "1",
                           "--warmup", "0", "--repeats", "1", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["paper"] == "dtca" and result["size"] == "small" and result["device"] == "cpu"
    assert result["released_samples_per_s"] > 0 and result["ours_samples_per_s"] > 0
    assert result["ratio_ours_over_released"] == round(result["ours_samples_per_s"] / result["released_samples_per_s"], 2)
    assert '"ratio_ours_over_released"' in done.stdout
