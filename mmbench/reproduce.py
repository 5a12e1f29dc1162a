"""`mmbench reproduce`: plan the runs a paper's tables need, run them (skipping finished ones), print
the tables. (`mmbench regress`, the golden smoke checks, lives in `mmbench.regress`.)"""

from __future__ import annotations

import sys
import time

from mmbench.errors import MmbenchError
from mmbench.results import store


def _seeds(resolved, n: int | None) -> list[int]:
    seeds = list(resolved.recipe.train.seeds)
    if n is None:
        return seeds
    while len(seeds) < n:  # extend with the next unused integers
        seeds.append(max(seeds) + 1 if seeds else 0)
    return seeds[:n]


def _ensure_prepared(dataset: str, smoke: bool) -> None:
    from mmbench.data.prepare import MANIFEST, prepare, prepared_dir

    if (prepared_dir(dataset, smoke) / MANIFEST).exists():
        return
    if smoke:
        prepare(dataset, synthetic=True)
    else:
        from mmbench.data.catalog import get_dataset

        raise MmbenchError(f"{prepared_dir(dataset, False)}: {dataset} is not prepared; run "
                           f"`mmbench prepare {dataset} --raw DIR [--images DIR]` (raw files: {get_dataset(dataset).source})")


class Progress:
    """Rich progress with ETA on a terminal; plain periodic lines otherwise (CI, logs)."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.time()
        self.rich = None
        if sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

            self.rich = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            self.rich.start()
            self.task = self.rich.add_task("runs", total=total)

    def log(self, message: str) -> None:
        (self.rich.console.print if self.rich else print)(message)

    def advance(self, label: str) -> None:
        self.done += 1
        if self.rich:
            self.rich.update(self.task, advance=1, description=label)
        else:
            elapsed = time.time() - self.start
            eta = elapsed / self.done * (self.total - self.done)
            print(f"[{self.done}/{self.total}] {label} (elapsed {elapsed:.0f}s, eta {eta:.0f}s)", flush=True)

    def close(self) -> None:
        if self.rich:
            self.rich.stop()


def run_plan(paper: str, dataset: str, n_seeds: int | None, smoke: bool, dry_run: bool, skip_existing: bool,
             device: str | None) -> None:
    from mmbench.report.tables import plan, report

    recipes = plan(paper, dataset, smoke)
    if not recipes:
        raise MmbenchError(f"paper {paper} has no runnable rows for dataset {dataset!r}")
    jobs = [(r, seed) for r in recipes for seed in _seeds(r, n_seeds)]
    if dry_run:
        print(f"plan for {paper} on {dataset}{' (smoke)' if smoke else ''}: {len(recipes)} recipes, {len(jobs)} runs")
        for resolved, seed in jobs:
            exists = (store.run_dir(resolved, seed) / store.METRICS_FILE).exists()
            extra = f" --set {' '.join(resolved.overrides)}" if resolved.overrides else ""
            print(f"  {'done ' if exists else 'to do'}  {resolved.name} seed {seed}{extra} → {store.run_dir(resolved, seed)}")
        return
    for ds in sorted({r.recipe.dataset for r in recipes}):
        _ensure_prepared(ds, smoke)
    from mmbench.engine.trainer import fit

    progress = Progress(len(jobs))
    try:
        for resolved, seed in jobs:
            label = f"{resolved.name} seed {seed}" + (f" [{' '.join(resolved.overrides)}]" if resolved.overrides else "")
            if skip_existing and (store.run_dir(resolved, seed) / store.METRICS_FILE).exists():
                progress.log(f"skip (exists): {label}")
            else:
                fit(resolved, seed, resume=True, device=device, log=progress.log)
            progress.advance(label)
    finally:
        progress.close()
    print(report(paper, "md", smoke))
