"""`mmbench regress`: run the guarded smoke rows of each paper and compare them with the committed
goldens (`mmbench.results.goldens`), or rewrite the goldens with bands measured across platforms.

What is guarded (`golden_rows`): every plain row (a recipe without overrides) of a paper's tables on
every dataset, and every row that adds overrides or names another recipe of the paper (ablations,
sweep points, variants) on the paper's first dataset, so a dead component shows as an ablation golden
equal to the full model's (tests/shared/test_goldens.py checks that).

How bands are derived (`update_goldens`): smoke runs compute in float64 (`mmbench.engine.precision`),
and each row is run once under each of `goldens.PLATFORMS` — torch's instruction-set levels and thread counts,
in fresh processes because torch reads ATEN_CPU_CAPABILITY at start-up. The band of a metric is
SPREAD_FACTOR × the spread seen across them, but at least a floor far below a printed digit (`goldens.FLOORS`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mmbench.errors import MmbenchError
from mmbench.results.goldens import PLATFORMS



def paper_datasets(paper: str) -> list[str]:
    """The datasets of a paper's tables, in order of first appearance (the first is its main one)."""
    from mmbench.recipes.loader import load_paper

    return list(dict.fromkeys(col.dataset for table in load_paper(paper).tables for col in table.columns))


def golden_rows(paper: str, dataset: str | None = None) -> list:
    """The smoke rows guarded for PAPER (see module docstring), deduplicated by name and config."""
    from mmbench.report.tables import plan

    datasets = paper_datasets(paper)
    if dataset is not None:
        datasets = [d for d in datasets if d == dataset]
    rows, seen = [], set()
    for position, name in enumerate(datasets):
        full = f"{paper}/{name}"
        for resolved in plan(paper, name, smoke=True):
            plain = not resolved.overrides and not (resolved.name.startswith(f"{paper}/") and resolved.name != full)
            if not plain and position > 0:
                continue
            key = (resolved.name, resolved.config_hash)
            if key not in seen:
                seen.add(key)
                rows.append(resolved)
    return rows


def run_golden(entry: dict, root) -> dict:
    from mmbench.engine.trainer import fit
    from mmbench.recipes.loader import resolve

    resolved = resolve(entry["recipe"], entry["overrides"], smoke=True)
    return fit(resolved, entry["seed"], root=root, log=lambda m: None)


def check_goldens(papers: list[str] | None):
    from mmbench.results.goldens import compare, golden_papers, load_goldens

    from mmbench.paths import results_dir

    papers = papers or golden_papers()
    if not papers:  # e.g. an installed wheel: goldens are a developer artefact of the repository
        raise MmbenchError(f"{results_dir() / 'goldens'}: no goldens to check (they live in a checkout's results/goldens; "
                           "set MMBENCH_RESULTS to a checkout's results/)")
    drifts = []
    with tempfile.TemporaryDirectory() as tmp:
        for paper in papers:
            for entry in load_goldens(paper)["entries"]:
                drifts += compare(paper, entry, run_golden(entry, Path(tmp)))
    return drifts


def _run_rows_here(rows: list[tuple[str, list[str]]]) -> list[dict]:
    """Run smoke rows in this process; the measured side of `update_goldens`."""
    from mmbench.engine.trainer import fit
    from mmbench.recipes.loader import resolve

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in rows:
            resolved = resolve(name, overrides, smoke=True)
            result = fit(resolved, resolved.recipe.train.seeds[0], root=Path(tmp), log=lambda m: None)
            result.pop("run_dir", None)
            results.append(result)
    return results


class PlatformWorker:
    """A process under one platform's environment that runs smoke rows on request: rows go in as one JSON
    line, results come back as one, so a series of checks pays torch's start-up (and the first run's
    imports, ~6 CPU s) once instead of once a call. torch reads ATEN_CPU_CAPABILITY only at start-up,
    which is why the rows run there and not here."""

    def __init__(self, platform: dict, env: dict | None = None):
        self.platform, self._env = platform, {**os.environ, **(env or {}), **platform}
        self._proc: subprocess.Popen | None = None
        self._stderr = None
        self.ran_under: dict = {}  # what torch in the worker reported after the last call

    def _ensure_started(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._stderr = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty run cannot block
            self._proc = subprocess.Popen([sys.executable, "-m", "mmbench.regress"], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=self._stderr, env=self._env, text=True)
        return self._proc

    def run(self, rows: list[tuple[str, list[str]]]) -> list[dict]:
        proc = self._ensure_started()
        try:
            proc.stdin.write(json.dumps(rows) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        reply = json.loads(line) if line.strip() else None
        if not isinstance(reply, dict) or "error" in reply:
            raise MmbenchError(f"golden run under {self.platform} failed: {reply['error'] if reply else self._last_error()}")
        self.ran_under = reply["ran_under"]
        return reply["results"]

    def _last_error(self) -> str:
        self._proc.wait()
        self._stderr.seek(0)
        return (self._stderr.read().strip().splitlines() or [f"exit status {self._proc.returncode}, no output"])[-1]

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.wait()
        if self._stderr is not None:
            self._stderr.close()


def run_rows_under(platform: dict, rows: list[tuple[str, list[str]]]) -> list[dict]:
    """Smoke rows run in a fresh process under one platform's environment (one result per row)."""
    worker = PlatformWorker(platform)
    try:
        return worker.run(rows)
    finally:
        worker.close()


def _run_rows_on_every_platform(rows: list[tuple[str, list[str]]]) -> list[list[dict]]:
    """The first platform alone (it prepares synthetic data and feature caches, which are shared),
    then the others at once: they share the CPU, and only their results count."""
    from concurrent.futures import ThreadPoolExecutor

    first = run_rows_under(PLATFORMS[0], rows)
    with ThreadPoolExecutor(len(PLATFORMS) - 1) as pool:
        rest = list(pool.map(lambda platform: run_rows_under(platform, rows), PLATFORMS[1:]))
    return [first] + rest


def update_goldens(paper: str, recipe_names: list[str], dataset: str | None, reason: str) -> Path:
    """Run the chosen rows under every platform of PLATFORMS and store values and derived bands."""
    from mmbench.results.goldens import entry_with_bands, write_goldens

    chosen = [r for r in golden_rows(paper, dataset) if not recipe_names or r.name in recipe_names]
    if not chosen:
        raise MmbenchError(f"no smoke rows of {paper} match {recipe_names or 'the tables'}")
    rows = [(r.name, list(r.overrides)) for r in chosen]
    per_platform = _run_rows_on_every_platform(rows)
    entries = [entry_with_bands([runs[i] for runs in per_platform], list(r.overrides), PLATFORMS)
               for i, r in enumerate(chosen)]
    return write_goldens(paper, entries, reason, replace_all=not recipe_names and dataset is None)


def _serve() -> None:
    """The worker side of PlatformWorker: a JSON list of rows per stdin line, `{"results": [...]}` (or
    `{"error": ...}`) per stdout line, until stdin closes. What a run prints goes to stderr."""
    import contextlib
    import traceback

    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            with contextlib.redirect_stdout(sys.stderr):
                reply = {"results": _run_rows_here([(name, list(overrides)) for name, overrides in json.loads(line)])}
            import torch

            reply["ran_under"] = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
        except Exception as exc:  # the caller raises it with the platform named
            traceback.print_exc()
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    _serve()
