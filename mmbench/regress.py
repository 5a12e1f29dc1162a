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


def _start(platform: dict, rows: list[tuple[str, list[str]]]):
    proc = subprocess.Popen([sys.executable, "-m", "mmbench.regress"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **platform}, text=True)
    proc.stdin.write(json.dumps(rows))
    proc.stdin.close()
    proc.stdin = None  # so communicate() only drains stdout and stderr
    return proc


def _finish(platform: dict, proc) -> list[dict]:
    out, err = proc.communicate()
    if proc.returncode != 0:
        tail = (err.strip().splitlines() or ["(no output)"])[-1]
        raise MmbenchError(f"golden run under {platform} failed: {tail}")
    return json.loads(out.strip().splitlines()[-1])


def run_rows_under(platform: dict, rows: list[tuple[str, list[str]]]) -> list[dict]:
    """Smoke rows run in a fresh process under one platform's environment (one result per row)."""
    return _finish(platform, _start(platform, rows))


def _run_rows_on_every_platform(rows: list[tuple[str, list[str]]]) -> list[list[dict]]:
    """The first platform alone (it prepares synthetic data and feature caches, which are shared),
    then the others at once: they share the CPU, and only their results count."""
    first = run_rows_under(PLATFORMS[0], rows)
    rest = [(platform, _start(platform, rows)) for platform in PLATFORMS[1:]]
    return [first] + [_finish(platform, proc) for platform, proc in rest]


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


if __name__ == "__main__":  # worker: rows as JSON on stdin, results as one JSON line on stdout
    _rows = json.loads(sys.stdin.read())
    print(json.dumps(_run_rows_here([(name, list(overrides)) for name, overrides in _rows])))
