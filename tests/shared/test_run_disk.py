"""What a run keeps on disk (issue 30): checkpoint retention (`train.keep_checkpoints`), the bytes
recorded in metrics.json, and a finished run without optimiser state still evaluates and reports;
`train.deterministic` recorded and applied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mmbench.cli import app
from mmbench.engine.trainer import fit
from mmbench.recipes.loader import resolve

RECIPE = "baselines/twitter15-bert"


def _quiet(message: str) -> None:
    pass


def test_a_finished_run_keeps_the_best_weights_only_and_eval_report_and_resume_still_work(mm_env):
    logs: list[str] = []
    result = fit(resolve(RECIPE, smoke=True), 0, log=logs.append)
    run = Path(result["run_dir"])
    best = run / "checkpoints" / "best.pt"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt"]
    assert set(torch.load(best, weights_only=True)) == {"model", "loop"}  # no optimiser, scheduler or RNG state
    saved = json.loads((run / "metrics.json").read_text())
    record = saved["checkpoints"]
    assert record["keep"] == "best_weights" and record["files"] == {"best.pt": best.stat().st_size}
    assert record["bytes"] == best.stat().st_size < record["peak_bytes"]  # last.pt (full state) was there while training

    runner = CliRunner()
    evaluated = runner.invoke(app, ["eval", str(run)])
    assert evaluated.exit_code == 0, evaluated.output
    assert f"accuracy={saved['metrics']['test']['accuracy']:.4f}" in evaluated.stdout
    table = runner.invoke(app, ["report", "itm", "--smoke"])
    row = next(line for line in table.stdout.splitlines() if line.startswith("| BERT["))
    assert f"{saved['metrics']['test']['accuracy']:.2f}" in row, row

    stamp = (run / "metrics.json").stat().st_mtime_ns
    again = fit(resolve(RECIPE, smoke=True), 0, resume=True, log=logs.append)  # nothing to resume: not retrained
    assert again["metrics"] == saved["metrics"] and (run / "metrics.json").stat().st_mtime_ns == stamp
    assert any("finished already" in line for line in logs) and not any("epoch 1/" in line for line in logs[-2:])


def test_full_retention_keeps_both_full_states_in_the_same_run_dir_with_the_same_metrics(mm_env):
    plain = fit(resolve(RECIPE, smoke=True), 0, root=mm_env / "a", log=_quiet)
    full = fit(resolve(RECIPE, ["train.keep_checkpoints=full"], smoke=True), 0, root=mm_env / "b", log=_quiet)
    assert Path(full["run_dir"]).name == Path(plain["run_dir"]).name  # storage only: not in the config hash
    assert full["metrics"] == plain["metrics"]
    checkpoints = Path(full["run_dir"]) / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.pt", "last.pt"]
    for name in ("best.pt", "last.pt"):
        assert {"optimizers", "rng"} <= set(torch.load(checkpoints / name, weights_only=True)), name
    assert full["checkpoints"]["bytes"] == sum(p.stat().st_size for p in checkpoints.iterdir())


def test_deterministic_algorithms_are_a_recipe_setting_recorded_in_metrics(mm_env):
    assert resolve(RECIPE).recipe.train.deterministic is True
    assert "deterministic" not in resolve(RECIPE).as_dict()["train"]  # the default stays out of the config hash
    result = fit(resolve(RECIPE, ["train.deterministic=false", "train.epochs=1"], smoke=True), 0, log=_quiet)
    try:
        assert result["environment"]["deterministic"] is False and not torch.are_deterministic_algorithms_enabled()
        assert result["config_hash"] != resolve(RECIPE, ["train.epochs=1"], smoke=True).config_hash
    finally:
        torch.use_deterministic_algorithms(True, warn_only=True)
    again = fit(resolve(RECIPE, ["train.epochs=1"], smoke=True), 0, log=_quiet)
    assert again["environment"]["deterministic"] is True and torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("value", ["weights", "none"])
def test_an_unknown_retention_is_one_line(value):
    from mmbench.errors import RecipeError

    with pytest.raises(RecipeError, match="train.keep_checkpoints"):
        resolve(RECIPE, [f"train.keep_checkpoints={value}"])


def test_disk_per_run_is_what_the_checkpoint_files_take(tmp_path):
    """The figures `rehearse` reports (no run needed) against files save_checkpoint/save_weights write."""
    from mmbench.engine.checkpoint import disk_per_run, save_checkpoint, save_weights

    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.Linear(512, 3))
    frozen = torch.nn.Linear(3, 512).requires_grad_(False)  # frozen parts are in the weights, not the optimiser
    model.append(frozen)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model(torch.randn(4, 256)).sum().backward()
    optimizer.step()
    disk = disk_per_run(model, {"main": optimizer})
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert disk["weights"] == weights
    trained = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    assert disk["full_state"] - weights - 2 * trained > 0  # + exp_avg, exp_avg_sq, steps and RNG state
    save_checkpoint(tmp_path / "last.pt", model, {"main": optimizer}, {}, {"epoch": 1})
    save_weights(tmp_path / "best.pt", model, {"epoch": 1})
    for name, expected in (("last.pt", disk["full_state"]), ("best.pt", disk["weights"])):
        size = (tmp_path / name).stat().st_size
        assert expected <= size <= expected * 1.02 + 64 * 1024, (name, size, expected)
    assert disk["while_training"] == disk["full_state"] + disk["weights"] and disk["finished_full"] == 2 * disk["full_state"]
