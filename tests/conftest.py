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


# `make test-durations`: with MMBENCH_TEST_TIMES=DIR each test process (each xdist worker) writes the
# wall and CPU seconds of every test it ran (CPU: this process and the subprocesses it waited for),
# summed up by scripts/test_durations.py. CPU seconds are what two cores share, whatever else runs; the start
# time shows how the two workers' queues ended. A long-lived child (the portable PlatformWorker) is counted
# when it exits, at the last test of its test worker.
_TIMES: dict[str, tuple[float, float]] = {}


def _cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not os.environ.get("MMBENCH_TEST_TIMES"):
        yield
        return
    import time

    cpu, wall, started = _cpu_seconds(), time.perf_counter(), time.time()
    yield
    _TIMES[item.nodeid] = (time.perf_counter() - wall, _cpu_seconds() - cpu, started)


def pytest_sessionfinish(session):
    folder = os.environ.get("MMBENCH_TEST_TIMES")
    if folder and _TIMES:
        import json

        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        Path(folder, f"times-{worker}.json").write_text(json.dumps(_TIMES))


# Slow tests that mostly wait on child processes (wall seconds well above CPU seconds: a Slurm job held
# to its time limit, launchers, torchrun, the wheel and GPU-check scripts), longest first. They start
# first, so their waiting overlaps the other worker's work instead of ending the session alone on one core.
_WAITING = ("tests/shared/test_launchers.py::test_a_slurm_job_past_its_time_limit",
            "tests/shared/test_launchers.py::test_gpus_launcher_runs_two_children",
            "tests/shared/test_packaging.py::test_the_wheel_installs",
            "tests/shared/test_launchers.py", "tests/shared/test_gpu_check.py", "tests/shared/test_engine.py::test_two_process")


def _waiting_rank(nodeid: str) -> int:
    return next((i for i, prefix in enumerate(_WAITING) if nodeid.startswith(prefix)), len(_WAITING))


def pytest_collection_modifyitems(config, items):
    """Slow tests first, the waiting ones first of all (stable otherwise): with two xdist workers stealing
    work, the long ones start at once and the short ones fill the gaps, instead of one long test running
    alone at the end."""
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None, _waiting_rank(item.nodeid)))


@pytest.fixture
def float64():
    """The default dtype float64 for one test, restored afterwards (exactness and finite-difference
    checks: the CMCS oracle differences two dev losses ~1e-5 apart; other tests' models are float32)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
