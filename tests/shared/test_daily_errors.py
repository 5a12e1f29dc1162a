"""The errors a user meets daily (issue 30 item 6): each one line, exit code 2 where it is an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmbench.cli import app
from mmbench.errors import RecipeError
from mmbench.recipes.loader import resolve


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, *parts: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("command", ["reproduce", "status"])
def test_a_wrong_dataset_lists_the_papers_datasets(command, mm_env):
    line = one_line_error(invoke(command, "itm", "--dataset", "twiter15", "--smoke"), "unknown itm dataset 'twiter15'",
                          "did you mean 'twitter15'", "twitter17")
    assert not (mm_env / "runs").exists(), line


def test_reproduce_names_every_unprepared_dataset_at_once(mm_env, monkeypatch, tmp_path):
    monkeypatch.setenv("MMBENCH_DATA", str(tmp_path / "empty-data"))
    line = one_line_error(invoke("reproduce", "itm", "--dataset", "twitter15", "--device", "cpu"), "2 dataset(s) of the plan not prepared")
    assert "mmbench prepare twitter15 " in line and "mmbench prepare itm-twitter15 " in line


def test_report_without_finished_runs_says_where_it_looked_and_that_smoke_runs_exist(mm_env):
    result = invoke("report", "itm")
    assert result.exit_code == 0 and "Table" in result.stdout
    assert result.stderr.strip() == f"warning: no finished runs of itm's tables under {mm_env / 'runs'} (MMBENCH_RUNS)"
    run = mm_env / "runs" / "baselines" / "twitter15" / "twitter15-bert-smoke" / "seed0-0123456789"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"recipe": "baselines/twitter15-bert", "smoke": True, "metrics": {"test": {}}}))
    assert "1 smoke run(s) exist there: add --smoke" in invoke("report", "itm").stderr
    assert invoke("report", "itm", "--smoke").stderr == ""


def test_eval_of_an_unfinished_run_warns_and_writes_nothing_unless_asked(mm_env):
    from mmbench.engine.trainer import fit

    run = Path(fit(resolve("baselines/twitter15-bert", ["train.epochs=1"], smoke=True), 0, log=lambda m: None)["run_dir"])
    (run / "metrics.json").unlink()  # unfinished: its best.pt is there, its metrics are not
    before = sorted(p.name for p in run.iterdir())
    result = invoke("eval", run)
    assert result.exit_code == 0 and result.stdout.startswith("test (best): accuracy=")
    assert result.stderr.strip().splitlines() == [f"warning: {run} is unfinished (no metrics.json); evaluating its best "
                                                  "checkpoint without writing into the run dir (--write to keep the files)"]
    assert sorted(p.name for p in run.iterdir()) == before
    written = invoke("eval", run, "--write")
    assert written.exit_code == 0 and written.stderr == "" and (run / "eval-test-best.json").exists()


def test_smoke_keeps_the_keys_a_user_recipe_sets_over_the_builtin_it_extends(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    (folder / "exp").mkdir(parents=True)
    (folder / "exp" / "long.yaml").write_text("extends: itm/twitter15\ntrain: {epochs: 17}\nsmoke: {train.batch_size: 3}\n")
    monkeypatch.setenv("MMBENCH_RECIPES", str(folder))
    builtin, mine = resolve("itm/twitter15", smoke=True), resolve("exp/long", smoke=True)
    assert mine.recipe.train.epochs == 17 and builtin.recipe.train.epochs != 17
    assert mine.recipe.train.batch_size == 3  # its own smoke block applies
    assert mine.model_config.text_encoder == builtin.model_config.text_encoder == "tiny-roberta"  # the rest of the smoke block too
    assert mine.config_hash != builtin.config_hash


def test_extends_with_a_builtin_file_name_hints_at_extending_by_name(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    (folder / "exp").mkdir(parents=True)
    (folder / "exp" / "a.yaml").write_text("extends: itm/twitter15.yaml\n")
    monkeypatch.setenv("MMBENCH_RECIPES", str(folder))
    with pytest.raises(RecipeError, match=r"a\.yaml.*extends.*a built-in recipe is extended by name, without \.yaml: extends: itm/twitter15"):
        resolve("exp/a")
