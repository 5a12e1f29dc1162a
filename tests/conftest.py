"""Shared fixtures: every test writes into temp folders, never into the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One thread: on the 2-core CI machines tiny models run faster without thread contention, and
# smoke trainings use one thread too (mmbench.engine.trainer._set_threads).
torch.set_num_threads(1)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def shared_data_root(tmp_path_factory) -> Path:
    """One data root per test session, so synthetic datasets are generated once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def mm_env(monkeypatch, shared_data_root, tmp_path) -> Path:
    """MMBENCH_DATA (shared, session-wide) and MMBENCH_RUNS (per test) in temp folders."""
    monkeypatch.setenv("MMBENCH_DATA", str(shared_data_root))
    monkeypatch.setenv("MMBENCH_RUNS", str(tmp_path / "runs"))
    return tmp_path


def real_path(*parts: str) -> Path:
    path = REAL.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not present: {path}")
    return path
