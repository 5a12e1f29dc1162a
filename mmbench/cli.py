"""The `mmbench` command line. Heavy imports (torch, transformers) happen inside commands so that
`mmbench --help` stays fast."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import List, Optional

import typer

from mmbench.errors import MmbenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=(
    "Reproduce the tables of five multimodal papers: prepare → train → eval → report.\n\n"
    "Start with `mmbench reproduce itm --dataset twitter15 --smoke` (offline, synthetic data)."))


def cli_errors(func):
    """Print an MmbenchError as one line and exit 2 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MmbenchError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except OSError as exc:  # a read-only folder, a full disk, a file that vanished: one line naming it
            where = f"{exc.filename}: " if exc.filename else ""
            typer.echo(f"error: {where}{exc.strerror or exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        from mmbench import __version__
        from mmbench.paths import checkout_root
        from mmbench.results.store import git_state

        git = git_state() if checkout_root() is not None else {}
        commit = git.get("git_commit")
        typer.echo(f"mmbench {__version__}" + (f" (git {commit[:12]}{', dirty' if git.get('git_dirty') else ''})" if commit else ""))
        raise typer.Exit()


def _add_recipe_folders(folders: Optional[List[Path]]) -> None:
    """--recipes DIR (repeatable) goes before MMBENCH_RECIPES; child processes inherit it."""
    if folders:
        import os

        from mmbench.paths import RECIPES_ENV

        old = [p for p in os.environ.get(RECIPES_ENV, "").split(os.pathsep) if p]
        os.environ[RECIPES_ENV] = os.pathsep.join([*(str(f) for f in folders), *old])


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="print the version (and git commit in a checkout) and exit"),
         recipes: Optional[List[Path]] = typer.Option(None, "--recipes", help="a folder of your own recipes, searched after the "
                                                      "built-in ones (repeatable; also MMBENCH_RECIPES, os.pathsep-separated)")):
    """Reproduce the tables of five multimodal papers: prepare → train → eval → report."""
    _add_recipe_folders(recipes)


@app.command("ls")
@cli_errors
def ls(what: str = typer.Argument(..., help="papers | recipes | datasets | methods")):
    """List papers, recipes, datasets or methods."""
    from mmbench.recipes.loader import paper_names, recipe_names

    if what == "papers":
        from mmbench.recipes.loader import load_paper

        for name in paper_names():
            typer.echo(f"{name}\t{load_paper(name).title}")
    elif what == "recipes":
        from mmbench.paths import recipe_files

        files = recipe_files()
        for name in recipe_names():
            typer.echo(f"{name}\t{files[name].origin}\t{files[name].path}")
    elif what == "datasets":
        from mmbench.data.catalog import DATASETS

        for name in DATASETS.names():
            typer.echo(name)
    elif what == "methods":
        from mmbench.registry import method_registry

        for name in method_registry.names():
            typer.echo(name)
    else:
        from mmbench.registry import unknown_name_message

        raise MmbenchError(unknown_name_message("listing", what, ["datasets", "methods", "papers", "recipes"]))


@app.command()
@cli_errors
def show(recipe: str, set_: List[str] = typer.Option([], "--set", help="key.path=value override"),
         smoke: bool = typer.Option(False, help="apply the recipe's smoke overrides")):
    """Print a recipe fully resolved (extends and overrides applied) and its config hash."""
    import yaml

    from mmbench.recipes.loader import resolve

    resolved = resolve(recipe, set_, smoke=smoke)
    typer.echo(f"# {resolved.name}  config_hash={resolved.config_hash}  file={resolved.path}")
    typer.echo(yaml.safe_dump(resolved.as_dict(), sort_keys=False, allow_unicode=True))


@app.command()
@cli_errors
def validate(recipes: List[str] = typer.Argument(None, help="recipes to check (default: all, plus every paper.yaml)")):
    """Validate recipes and paper tables; exit 2 on the first error."""
    from mmbench.recipes.loader import load_paper, paper_names, recipe_names, resolve
    from mmbench.report.tables import plan

    names = recipes or recipe_names()
    for name in names:
        resolve(name)
        resolve(name, smoke=True)
    if not recipes:
        for paper in paper_names():
            load_paper(paper)
            plan(paper, None, smoke=False)
    typer.echo(f"ok: {len(names)} recipes" + ("" if recipes else f", {len(paper_names())} papers"))


@app.command()
@cli_errors
def prepare(dataset: str, raw: Optional[Path] = typer.Option(None, help="folder of the raw upstream files"),
            images: Optional[Path] = typer.Option(None, help="images root (optional for text-only use)"),
            out: Optional[Path] = typer.Option(None, help="output folder (default: data/prepared/DATASET)"),
            synthetic: bool = typer.Option(False, help="generate and prepare the synthetic stand-in"),
            allow_count_mismatch: bool = typer.Option(False, help="prepare even if counts differ from the published ones")):
    """Raw upstream files → prepared dataset + manifest, checked against the published counts."""
    from mmbench.data.prepare import prepare as run_prepare, prepared_dir

    manifest = run_prepare(dataset, raw, images, out, synthetic, allow_count_mismatch)
    typer.echo(f"prepared {dataset} → {out or prepared_dir(dataset, synthetic)}")
    for split, count in manifest["counts"].items():
        labels = ", ".join(f"{n}={c}" for n, c in zip(manifest["label_names"], manifest["label_counts"][split]))
        typer.echo(f"  {split}: {count} ({labels})")
    typer.echo(f"  count check: {manifest['count_check']}")
    if manifest.get("missing_images"):
        typer.echo(f"  missing images per split: {manifest['missing_images']}")


def _logger():
    return lambda message: typer.echo(message)


@app.command()
@cli_errors
def train(recipe: str, seed: Optional[int] = typer.Option(None, help="default: the recipe's first seed"),
          set_: List[str] = typer.Option([], "--set", help="key.path=value override (validated, recorded)"),
          subset: Optional[str] = typer.Option(None, help="'smoke' (synthetic data, tiny encoders) or N (first N examples per split)"),
          smoke: bool = typer.Option(False, help="same as --subset smoke"),
          resume: bool = typer.Option(False, help="continue from the run's last checkpoint"),
          device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cuda if available)")):
    """Train one recipe for one seed; writes runs/<paper>/<dataset>/<recipe>/seed<k>-<hash>/."""
    from mmbench.engine.trainer import fit
    from mmbench.recipes.loader import resolve

    overrides = list(set_)
    smoke = smoke or subset == "smoke"
    if subset not in (None, "smoke"):
        if not subset.isdigit():
            raise MmbenchError(f"--subset {subset!r}: expected 'smoke' or a number")
        overrides.append(f"data.subset={int(subset)}")
    resolved = resolve(recipe, overrides, smoke=smoke)
    if seed is not None:
        from mmbench.recipes.loader import check_seed

        check_seed(seed, "--seed")
    seed = resolved.recipe.train.seeds[0] if seed is None else seed
    if resume:
        from mmbench.results.store import check_resume, run_dir

        check_resume(run_dir(resolved, seed))
    result = fit(resolved, seed, resume=resume, device=device, log=_logger())
    typer.echo(f"done: {result['run_dir']}")
    for split in ("dev", "test"):
        typer.echo(f"  {split}: " + ", ".join(f"{k}={v:.2f}" for k, v in result["metrics"][split].items()))


@app.command("eval")
@cli_errors
def eval_(run_dir: Path, split: str = typer.Option("test", help="dev | test"),
          checkpoint: str = typer.Option("best", help="best | last"), device: Optional[str] = typer.Option(None),
          write: Optional[bool] = typer.Option(None, "--write/--no-write", help="write predictions and eval-*.json into the "
                                               "run dir (default: only for a finished run)")):
    """Evaluate a run's checkpoint on a split (also under torchrun)."""
    from mmbench.engine.trainer import evaluate_run
    from mmbench.results import locks
    from mmbench.results.store import LOCK_FILE, METRICS_FILE

    finished = (run_dir / METRICS_FILE).exists()
    # not a run dir, or one being trained: evaluate_run says so in one line
    if not finished and write is None and (run_dir / "recipe.yaml").is_file() and not locks.holder(run_dir / LOCK_FILE):
        typer.echo(f"warning: {run_dir} is unfinished (no {METRICS_FILE}); evaluating its {checkpoint} checkpoint "
                   "without writing into the run dir (--write to keep the files)", err=True)
    metrics = evaluate_run(run_dir, split, checkpoint, device, write=finished if write is None else write)
    typer.echo(f"{split} ({checkpoint}): " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


@app.command()
@cli_errors
def report(paper: Optional[str] = typer.Argument(None, help="paper id (see `mmbench ls papers`)"),
           format: str = typer.Option("md", "--format", help="md | latex | csv"),
           smoke: bool = typer.Option(False, help="show smoke runs (never mixed with full runs)"),
           all_: bool = typer.Option(False, "--all", help="every paper"),
           table: List[str] = typer.Option([], "--table", help="only this table id (repeatable)"),
           no_runs: bool = typer.Option(False, "--no-runs", help="ignore runs/: the paper's numbers and our notes only "
                                        "(what results/tables/ commits; `make tables`)"),
           out: Optional[Path] = typer.Option(None, help="write <paper>.<ext> files (and sweep PNGs) into this folder")):
    """Render a paper's tables from finished runs: ours, the paper's value, Δ and a verdict from the seeds."""
    from mmbench.recipes.loader import paper_names
    from mmbench.report.tables import no_runs_warning, render
    from mmbench.results.store import atomic_write_text

    if format not in ("md", "latex", "csv"):
        raise MmbenchError(f"--format {format!r}: expected md, latex or csv")
    papers = paper_names() if all_ else [paper] if paper else None
    if not papers:
        raise MmbenchError("name a paper or pass --all")
    for name in papers:
        rendered = render(name, format, smoke, plot_dir=out, tables=table or None, no_runs=no_runs)
        for path in rendered.written:
            typer.echo(f"wrote {path}")
        if out:
            ext = {"md": "md", "latex": "tex", "csv": "csv"}[format]
            target = out / f"{name}{'-smoke' if smoke else ''}.{ext}"
            atomic_write_text(target, rendered.text)
            typer.echo(f"wrote {target}")
        else:
            typer.echo(rendered.text)
        warning = None if no_runs else no_runs_warning(name, smoke)
        if warning:
            typer.echo(f"warning: {warning}", err=True)


@app.command()
@cli_errors
def reproduce(paper: str, dataset: str = typer.Option(..., help="dataset of the paper's tables"),
              seeds: Optional[int] = typer.Option(None, help="seeds per recipe (default: the recipe's list)"),
              smoke: bool = typer.Option(False, help="synthetic data and tiny encoders (offline, CPU, seconds)"),
              dry_run: bool = typer.Option(False, help="print the plan and what already exists, run nothing"),
              skip_existing: bool = typer.Option(False, help="skip runs whose metrics.json exists (same config hash)"),
              device: Optional[str] = typer.Option(None, help="cpu | cuda"),
              table: List[str] = typer.Option([], "--table", help="only the runs of this table id (repeatable, e.g. table3)"),
              launcher: str = typer.Option("local", help="local (one after another here) | gpus (one child per GPU) | slurm (submitit)"),
              gpus: Optional[str] = typer.Option(None, help="with --launcher gpus: CUDA_VISIBLE_DEVICES ids, e.g. 0,1,2,3 (default: all visible)"),
              launcher_config: Optional[Path] = typer.Option(None, help="YAML file with a launcher: section (slurm options)"),
              partition: Optional[str] = typer.Option(None, help="slurm partition"),
              time: Optional[str] = typer.Option(None, help="slurm time limit: minutes or [D-]HH:MM:SS"),
              gpus_per_task: Optional[int] = typer.Option(None, help="slurm GPUs per run (default 1)"),
              cpus_per_task: Optional[int] = typer.Option(None, help="slurm CPUs per run"),
              sbatch: List[str] = typer.Option([], "--sbatch", help="extra sbatch option KEY=VALUE (repeatable), e.g. account=lab"),
              wait: bool = typer.Option(True, "--wait/--no-wait", help="slurm: wait and print the tables, or submit and return")):
    """Prepare if needed, train every recipe of PAPER's tables on DATASET for N seeds, evaluate, print the tables."""
    from mmbench.reproduce import run_plan

    slurm_options = None
    if launcher == "slurm":
        from mmbench.launchers.slurm import SlurmOptions

        bad = [s for s in sbatch if "=" not in s or not s.split("=", 1)[0]]
        if bad:
            raise MmbenchError(f"--sbatch {bad[0]!r}: expected KEY=VALUE, e.g. account=my-lab")
        slurm_options = SlurmOptions.load(launcher_config, partition=partition, time=time, gpus_per_task=gpus_per_task,
                                          cpus_per_task=cpus_per_task, sbatch=dict(s.split("=", 1) for s in sbatch))
    run_plan(paper, dataset, seeds, smoke, dry_run, skip_existing, device, launcher=launcher, tables=table or None,
             gpus=gpus, slurm_options=slurm_options, wait=wait)


@app.command()
@cli_errors
def status(paper: str, dataset: Optional[str] = typer.Option(None, help="only this dataset (default: every dataset of the tables)"),
           seeds: Optional[int] = typer.Option(None, help="seeds per recipe, as given to reproduce"),
           smoke: bool = typer.Option(False, help="the smoke plan"),
           table: List[str] = typer.Option([], "--table", help="only the runs of this table id (repeatable)"),
           json_: bool = typer.Option(False, "--json", help="one JSON object: runs and counts per state")):
    """Which runs of PAPER's plan are done, running, queued, failed, partial or missing, with their paths."""
    import json

    from mmbench.launchers import STATES
    from mmbench.reproduce import plan_status

    rows = plan_status(paper, dataset, seeds, smoke, table or None)
    counts = {state: sum(r["state"] == state for r in rows) for state in STATES}
    if json_:
        typer.echo(json.dumps({"paper": paper, "dataset": dataset, "smoke": smoke, "counts": counts, "runs": rows}, indent=1))
        return
    for r in rows:
        extra = f" [{' '.join(r['overrides'])}]" if r["overrides"] else ""
        typer.echo(f"{r['state']:<8} {r['recipe']} seed {r['seed']}{extra}  {r['run_dir']}" + (f"  ({r['detail']})" if r["detail"] else ""))
    typer.echo(", ".join(f"{n} {state}" for state, n in counts.items() if n) + f" of {len(rows)} runs")


@app.command()
@cli_errors
def regress(update: bool = typer.Option(False, help="re-run and rewrite the goldens (bands measured across platforms)"),
            paper: List[str] = typer.Option([], help="papers (default: every paper with goldens)"),
            recipe: List[str] = typer.Option([], help="with --update: only these recipes (default: every guarded row)"),
            dataset: Optional[str] = typer.Option(None, help="with --update: only this dataset"),
            reason: Optional[str] = typer.Option(None, help="why the goldens change (required with --update)")):
    """Check the smoke runs against the committed golden bands (or --update them)."""
    from mmbench.regress import check_goldens, update_goldens

    if update:
        if not reason:
            raise MmbenchError("--update needs --reason \"why the numbers change\"")
        if not paper:
            raise MmbenchError("--update needs --paper")
        for name in paper:
            path = update_goldens(name, recipe, dataset, reason)
            typer.echo(f"wrote {path}")
        return
    drifts = check_goldens(paper or None)
    for drift in drifts:
        typer.echo(str(drift), err=True)
    if drifts:
        raise typer.Exit(1)
    typer.echo("goldens: all metrics within their bands")


@app.command(context_settings={"ignore_unknown_options": True})  # --options after the name go to the script
@cli_errors
def bench(name: Optional[str] = typer.Argument(None, help="benchmark script under benchmarks/ (default: list them)"),
          args: List[str] = typer.Argument(None, help="arguments passed to the benchmark")):
    """Run a speed/memory benchmark from benchmarks/ (results go to benchmarks/results/)."""
    import subprocess

    from mmbench.paths import benchmarks_dir

    folder = benchmarks_dir()
    scripts = sorted(p.stem for p in folder.glob("*.py") if not p.name.startswith("_"))
    name = {"input": "input_pipeline", "vs-official": "vs_official"}.get(name, name)  # `bench input dtca`, `bench vs-official itm`
    if name is None:
        for script in scripts:
            typer.echo(script)
        return
    if name not in scripts:
        from mmbench.registry import unknown_name_message

        raise MmbenchError(unknown_name_message("benchmark", name, scripts))
    raise typer.Exit(subprocess.call([sys.executable, str(folder / f"{name}.py"), *(args or [])]))


@app.command()
@cli_errors
def rehearse(recipe: Optional[str] = typer.Argument(None, help="recipe to rehearse (or --all-recipes)"),
             steps: int = typer.Option(2, help="optimiser steps of every optimiser the method has"),
             warmup: int = typer.Option(0, help="extra steps first, left out of the steady-state samples/s"),
             batch: Optional[int] = typer.Option(None, help="batch size (default: the recipe's)"),
             device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cuda if available)"),
             precision: Optional[str] = typer.Option(None, help="auto | fp32 | bf16 (default: the recipe's)"),
             width_scale: float = typer.Option(1.0, help="encoder widths × this (< 1: a cheap check of the code path)"),
             set_: List[str] = typer.Option([], "--set", help="key.path=value override"),
             start_epoch: int = typer.Option(0, help="rehearse from this epoch (methods that change by epoch, e.g. stages)"),
             max_batches: Optional[int] = typer.Option(None, help="stop after this many training batches (default 25 × steps)"),
             all_recipes: bool = typer.Option(False, "--all-recipes", help="every recipe of every paper.yaml, as a table"),
             paper: List[str] = typer.Option([], help="with --all-recipes: only these papers"),
             every_row: bool = typer.Option(False, help="with --all-recipes: every distinct table row, sweeps included"),
             out: Optional[Path] = typer.Option(None, help="write the JSON report(s) to this file")):
    """Run RECIPE at paper size with random-weight encoders and real-shape synthetic data (offline):
    N optimiser steps + one eval batch; prints parameters, samples/s (and steady-state after --warmup), step time
    split, peak memory, finiteness, loss terms that stayed 0, and the estimated epoch / paper-plan wall time."""
    import json

    from mmbench.rehearsal.table import JSON_PREFIX, rehearse_all

    options = ["--steps", str(steps), "--warmup", str(warmup), "--width-scale", str(width_scale),
               "--start-epoch", str(start_epoch)]
    for flag, value in (("--batch", batch), ("--device", device), ("--precision", precision), ("--max-batches", max_batches)):
        if value is not None:
            options += [flag, str(value)]
    if all_recipes:
        reports = rehearse_all(options, paper or None, every_row, typer.echo)
    else:
        if recipe is None:
            raise MmbenchError("rehearse: name a recipe or pass --all-recipes")
        from mmbench.rehearsal.run import rehearse as run_rehearsal

        reports = [run_rehearsal(recipe, steps, batch, device, precision, width_scale, list(set_), start_epoch, max_batches,
                                 warmup=warmup)]
        typer.echo(JSON_PREFIX + json.dumps(reports[0]))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(reports if all_recipes else reports[0], indent=1) + "\n")
    if not all(r.get("ok") for r in reports):
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
