"""Where recipes, data, runs and results live. Everything is relative to the repository (or the
environment variables below), never an absolute path of one machine."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def recipes_dir() -> Path:
    return Path(os.environ.get("MMBENCH_RECIPES", REPO_ROOT / "recipes"))


def data_root() -> Path:
    """Raw and prepared data: <root>/raw/<dataset>, <root>/prepared/<dataset>[-synthetic]."""
    return Path(os.environ.get("MMBENCH_DATA", Path.cwd() / "data"))


def runs_root() -> Path:
    return Path(os.environ.get("MMBENCH_RUNS", Path.cwd() / "runs"))


def results_dir() -> Path:
    return Path(os.environ.get("MMBENCH_RESULTS", REPO_ROOT / "results"))
