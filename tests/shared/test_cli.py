import pytest
from typer.testing import CliRunner

from mmbench.cli import app

runner = CliRunner()
COMMANDS = ["ls", "show", "validate", "prepare", "train", "eval", "report", "reproduce", "regress", "bench"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.stdout


def test_validate_passes_on_every_built_in_recipe_and_paper():
    """`mmbench validate` over everything (it ran before pytest in `make test`; here it shares the test
    workers' imports and cores): every recipe resolves, plain and smoke, and every paper's plan."""
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("ok: ") and "recipes, 5 papers" in result.stdout


def test_ls_lists_papers_recipes_datasets():
    assert "itm" in runner.invoke(app, ["ls", "papers"]).stdout
    assert "baselines/twitter15-bert" in runner.invoke(app, ["ls", "recipes"]).stdout
    assert "twitter17" in runner.invoke(app, ["ls", "datasets"]).stdout


def test_errors_are_one_line_with_exit_code_2():
    result = runner.invoke(app, ["show", "baselines/twitter15-bert", "--set", "train.epoch=3"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.epoch: unknown key (did you mean train.epochs?)" in lines[0]
    result = runner.invoke(app, ["ls", "paper"])
    assert result.exit_code == 2 and "did you mean 'papers'" in result.stderr


def test_dry_run_prints_the_plan(mm_env):
    result = runner.invoke(app, ["reproduce", "itm", "--dataset", "twitter15", "--smoke", "--dry-run"])
    assert result.exit_code == 0
    assert "to do  baselines/twitter15-bert seed 0" in result.stdout
