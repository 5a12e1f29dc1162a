"""`mmbench reproduce`: plan the runs a paper's tables need, run them (skipping finished ones), print
the tables. (`mmbench regress`, the golden smoke checks, lives in `mmbench.regress`.)"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mmbench.errors import MmbenchError
from mmbench.results import store


def _seeds(resolved, n: int | None) -> list[int]:
    seeds = list(resolved.recipe.train.seeds)
    if n is None:
        return seeds
    while len(seeds) < n:  # extend with the next unused integers
        seeds.append(max(seeds) + 1 if seeds else 0)
    return seeds[:n]


def _ensure_prepared(datasets: list[str], smoke: bool) -> None:
    """Smoke: prepare the synthetic sets. Otherwise every dataset of the plan must be prepared; the
    error names all that are not, at once."""
    from mmbench.data.prepare import MANIFEST, prepare, prepared_dir

    missing = [ds for ds in datasets if not (prepared_dir(ds, smoke) / MANIFEST).exists()]
    if smoke:
        for dataset in missing:
            prepare(dataset, synthetic=True)
        return
    if missing:
        from mmbench.data.catalog import get_dataset

        raise MmbenchError(f"{len(missing)} dataset(s) of the plan not prepared under {prepared_dir(missing[0], False).parent}: " +
                           "; ".join(f"{ds} (`mmbench prepare {ds} --raw DIR [--images DIR]`, raw files: {get_dataset(ds).source})"
                                     for ds in missing))


def check_dataset(paper: str, dataset: str | None) -> None:
    """A dataset the paper's tables do not use: one line listing the ones they do (did you mean)."""
    from mmbench.recipes.loader import load_paper
    from mmbench.registry import unknown_name_message

    known = sorted({c.dataset for t in load_paper(paper).tables for c in t.columns})
    if dataset is not None and dataset not in known:
        raise MmbenchError(unknown_name_message(f"{paper} dataset", dataset, known))


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


def plan_runs(paper: str, dataset: str | None, n_seeds: int | None, smoke: bool, tables: list[str] | None = None) -> list:
    """[(resolved recipe, seed)] the paper's tables (or only `tables`, by id) need on `dataset`."""
    from mmbench.recipes.loader import load_paper
    from mmbench.report.tables import plan, row_recipe

    if n_seeds is not None and n_seeds < 1:
        raise MmbenchError(f"--seeds {n_seeds}: expected at least 1 seed per recipe")
    check_dataset(paper, dataset)
    recipes = plan(paper, dataset, smoke)
    if tables:
        known = {t.id: t for t in load_paper(paper).tables}
        missing = [t for t in tables if t not in known]
        if missing:
            from mmbench.registry import unknown_name_message

            raise MmbenchError(unknown_name_message("table", missing[0], sorted(known)))
        wanted = {(r.name, r.config_hash) for t in tables for row in known[t].rows for c in known[t].columns
                  if row.recipe is not None and (dataset is None or c.dataset == dataset)
                  for r in [row_recipe(row, c.dataset, smoke)]}
        recipes = [r for r in recipes if (r.name, r.config_hash) in wanted]
    if not recipes:
        raise MmbenchError(f"paper {paper} has no runnable rows for dataset {dataset!r}" + (f" in {', '.join(tables)}" if tables else ""))
    return [(r, seed) for r in recipes for seed in _seeds(r, n_seeds)]


def run_plan(paper: str, dataset: str, n_seeds: int | None, smoke: bool, dry_run: bool, skip_existing: bool,
             device: str | None, launcher: str = "local", tables: list[str] | None = None, gpus: str | None = None,
             slurm_options=None, wait: bool = True) -> None:
    """Train the plan with a launcher (see mmbench.launchers) and print the tables. gpus/slurm always
    skip finished runs and runs another launcher holds; failures are listed at the end (exit 1)."""
    from mmbench.report.tables import report

    from mmbench.engine.runtime import check_device

    check_device(device)
    jobs = plan_runs(paper, dataset, n_seeds, smoke, tables)
    if dry_run:
        print(f"plan for {paper} on {dataset}{' (smoke)' if smoke else ''}: {len({r.name + r.config_hash for r, _ in jobs})} recipes, {len(jobs)} runs")
        for resolved, seed in jobs:
            exists = (store.run_dir(resolved, seed) / store.METRICS_FILE).exists()
            extra = f" --set {' '.join(resolved.overrides)}" if resolved.overrides else ""
            print(f"  {'done ' if exists else 'to do'}  {resolved.name} seed {seed}{extra} → {store.run_dir(resolved, seed)}")
        return
    if launcher not in ("local", "gpus", "slurm"):
        raise MmbenchError(f"--launcher {launcher!r}: expected local, gpus or slurm")
    if launcher == "slurm":
        from mmbench.launchers.slurm import _submitit

        _submitit()  # one line naming what to install, before preparing anything
    elif launcher == "gpus":
        from mmbench.launchers.gpus import visible_gpus

        gpus = ",".join(visible_gpus(gpus))
    _ensure_prepared(sorted({r.recipe.dataset for r, _ in jobs}), smoke)
    plan_rows(paper, dataset, n_seeds, smoke, tables, pairs=jobs)  # primes `status` for this plan
    failed = 0
    if launcher == "local":
        _run_local(jobs, skip_existing, device)
    else:
        failed = _run_launched(jobs, launcher, device, gpus, slurm_options, wait)
        if failed is None:
            return
    print(report(paper, "md", smoke, tables=tables))
    if failed:
        raise MmbenchError(f"{failed} of {len(jobs)} runs failed (listed above the tables); re-run the same command "
                           "to retry them (finished runs are skipped)")


def _run_local(jobs, skip_existing: bool, device: str | None) -> None:
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


def _run_launched(pairs, launcher: str, device: str | None, gpus: str | None, slurm_options, wait: bool) -> int | None:
    """Hand the runs that are not done or held elsewhere to the gpus/slurm launcher; the number of
    failed runs, or None when the tables must not be printed yet (--no-wait)."""
    from mmbench.launchers import make_jobs, summarize
    from mmbench.launchers.status import run_state

    jobs, results = [], []
    for job in make_jobs(pairs, device):
        state, detail = run_state(job.run_dir)
        if state in ("done", "queued", "running"):
            print(f"skip ({state}{': ' + detail if detail else ''}): {job.label}", flush=True)
            results.append((job, state, detail))
        else:
            jobs.append(job)
    log = lambda message: print(message, flush=True)  # noqa: E731
    if launcher == "gpus":
        from mmbench.launchers import gpus as gpu_launcher

        results += gpu_launcher.run(jobs, gpus.split(","), log)
    else:
        from mmbench.launchers import slurm

        submitted = slurm.submit(jobs, slurm_options or slurm.SlurmOptions(), log)
        if not wait:
            print(f"submitted {len(submitted)} jobs; follow them with `mmbench status` and render with `mmbench report`")
            return None
        results += slurm.wait(submitted, log)
    failed = summarize(results, log)
    if any(state in ("queued", "running") for _, state, _ in results):
        print("some runs are held by another launcher; their cells stay empty until they finish")
    return failed


def plan_status(paper: str, dataset: str | None, n_seeds: int | None, smoke: bool, tables: list[str] | None = None) -> list[dict]:
    """`mmbench status`: each run of the plan with its state (mmbench.launchers.STATES), progress and path."""
    from mmbench.launchers.status import run_state

    rows = plan_rows(paper, dataset, n_seeds, smoke, tables)
    for row in rows:
        row["state"], row["detail"] = run_state(Path(row["run_dir"]), row.pop("epochs"))
    return rows


def plan_rows(paper: str, dataset: str | None, n_seeds: int | None, smoke: bool, tables: list[str] | None = None,
              pairs: list | None = None) -> list[dict]:
    """The plan's runs as plain rows, remembered between calls (mmbench.plan_cache); `reproduce` passes
    the plan it resolved, so a `status` of the same plan answers at once."""
    from mmbench.plan_cache import cached_rows

    def compute() -> list[dict]:
        return [{"recipe": r.name, "overrides": list(r.overrides), "seed": seed, "dataset": r.recipe.dataset,
                 "run_dir": str(store.run_dir(r, seed)), "epochs": r.recipe.train.epochs}
                for r, seed in (pairs if pairs is not None else plan_runs(paper, dataset, n_seeds, smoke, tables))]
    args = {"paper": paper, "dataset": dataset, "seeds": n_seeds, "smoke": smoke, "tables": tables}
    return cached_rows(args, compute)
