"""Installing mmbench as a tool (issue 20): the recipe search path (built-in, then user folders),
`--version`, and the wheel check (scripts/check_wheel.sh) that installs the wheel into a fresh venv."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmbench.cli import app
from mmbench.errors import RecipeError
from mmbench.paths import BUILTIN, recipe_files
from mmbench.recipes.loader import load_paper, paper_names, recipe_names, resolve

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def user_dirs(tmp_path, monkeypatch):
    first, second = tmp_path / "mine", tmp_path / "lab"
    first.mkdir()
    second.mkdir()
    monkeypatch.setenv("MMBENCH_RECIPES", os.pathsep.join([str(first), str(second)]))
    return first, second


def test_user_recipe_extends_a_builtin_one_by_name(user_dirs):
    mine, _ = user_dirs
    write(mine / "exp" / "itm-long.yaml", "extends: itm/twitter15\ntrain: {epochs: 17}\nassumptions: [mine]\n")
    builtin = resolve("itm/twitter15")
    resolved = resolve("exp/itm-long")
    assert resolved.path == mine / "exp" / "itm-long.yaml"
    assert resolved.recipe.paper == "itm" and resolved.recipe.method == builtin.recipe.method
    assert resolved.recipe.train.epochs == 17 and builtin.recipe.train.epochs != 17
    assert resolved.recipe.assumptions == [*builtin.recipe.assumptions, "mine"]  # built-in base + its own one level
    assert resolved.config_hash != builtin.config_hash


def test_named_extends_may_not_chain(user_dirs):
    mine, lab = user_dirs
    write(mine / "exp" / "a.yaml", "extends: itm/twitter15\n")
    write(lab / "exp" / "b.yaml", "extends: exp/a\n")
    with pytest.raises(RecipeError, match=r"b\.yaml.*extends.*exp/a itself extends itm/twitter15"):
        resolve("exp/b")
    write(lab / "exp" / "c.yaml", "extends: itm/twiter15\n")
    with pytest.raises(RecipeError, match=r"c\.yaml.*did you mean 'itm/twitter15'"):
        resolve("exp/c")


def test_a_name_defined_twice_is_an_error_naming_both_files(user_dirs):
    _, lab = user_dirs
    copy = write(lab / "baselines" / "twitter15-bert.yaml", (REPO / "recipes/baselines/twitter15-bert.yaml").read_text())
    with pytest.raises(RecipeError) as err:
        recipe_names()
    assert str(REPO / "recipes" / "baselines" / "twitter15-bert.yaml") in str(err.value) and str(copy) in str(err.value)
    copy.unlink()
    write(lab / "itm" / "paper.yaml", "title: x\n")
    with pytest.raises(RecipeError, match=r"paper 'itm/paper' is defined twice: .*recipes/itm/paper\.yaml and .*lab/itm/paper\.yaml"):
        load_paper("itm")


def test_user_papers_join_the_builtin_ones_and_ls_shows_where_each_recipe_comes_from(tmp_path, monkeypatch):
    monkeypatch.setenv("MMBENCH_RECIPES", "")  # recorded, so the value --recipes sets is undone after the test
    folder = tmp_path / "extra"
    write(folder / "toy" / "twitter15.yaml", "extends: baselines/twitter15-bert\n")
    write(folder / "toy" / "paper.yaml", "title: toy\n")
    result = CliRunner().invoke(app, ["--recipes", str(folder), "ls", "recipes"])
    assert result.exit_code == 0, result.output
    origin = dict(line.split("\t")[:2] for line in result.stdout.splitlines())
    assert origin["toy/twitter15"] == str(folder) and origin["itm/twitter15"] == BUILTIN
    assert len(origin) == len([n for n, e in recipe_files().items() if e.kind == "recipe"])  # --recipes reached the env
    assert "toy" in paper_names() and "itm" in paper_names()


def test_a_missing_user_folder_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("MMBENCH_RECIPES", str(tmp_path / "nope"))
    result = CliRunner().invoke(app, ["ls", "recipes"])
    assert result.exit_code == 2 and "nope: recipe folder (from --recipes / MMBENCH_RECIPES) does not exist" in result.output


def test_version_is_the_package_metadata_and_the_checkout_commit():
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert result.stdout.startswith(f"mmbench {version('mmbench')} (git {commit[:12]}")


def test_every_module_is_in_a_package_the_wheel_includes():
    """setup.py packages with find_packages: a folder of modules without __init__.py would be left out
    of the wheel (issue 30: `mmbench rehearse` failed with ModuleNotFoundError when installed)."""
    from setuptools import find_packages

    packages = set(find_packages(str(REPO), include=["mmbench", "mmbench.*"]))
    folders = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "mmbench").rglob("*.py")}
    assert folders <= packages, f"not packages (no __init__.py): {sorted(folders - packages)}"


@pytest.mark.slow
def test_the_wheel_installs_and_runs_from_any_directory():
    """Build the wheel, install it into a fresh venv, use it from a temp dir (25 CPU s here)."""
    result = subprocess.run(["bash", str(REPO / "scripts" / "check_wheel.sh")], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "check_wheel: ok" in result.stdout
