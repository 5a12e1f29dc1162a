"""Run directories and their files, all written atomically (temp file, fsync, rename, fsync of the folder).

runs/<paper>/<dataset>/<recipe>/seed<k>-<confighash>/
  recipe.yaml        the fully resolved recipe (overrides applied)
  metrics.json       the results schema below (written last: its presence means the run is done)
  log.jsonl          one line per epoch
  predictions-<split>.jsonl
  checkpoints/{last,best}.pt
  train.lock         held (flock, mmbench.results.locks) by the process training in the dir, or by a
                     launcher queueing it; its text names the holder

Every write goes through `atomic_write_bytes`, which calls `FAULT_HOOK(path, phase)` at each point a
process can die (`tmp-written`: the temp file is complete but not yet renamed; `renamed`: the target is
in place); tests set the hook to prove that a run killed at any of them resumes to the same result.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from mmbench import __version__
from mmbench.errors import MmbenchError
from mmbench.paths import REPO_ROOT, runs_root

SCHEMA_VERSION = 1
METRICS_FILE = "metrics.json"
LOCK_FILE = "train.lock"
TMP_SUFFIX = ".tmp"

# Test hook: called as FAULT_HOOK(path, phase) at every point of an atomic write.
FAULT_HOOK: Callable[[Path, str], None] | None = None


class SimulatedKill(BaseException):
    """Raised by a fault hook to stand for kill -9 at that instant: no cleanup handler of the
    atomic writer runs (a killed process leaves its temp file behind, so the test does too)."""


def _file_mode() -> int:
    """0666 minus the umask: mkstemp makes 0600 files, but run files are the user's ordinary files."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _fault(path: Path, phase: str) -> None:
    if FAULT_HOOK is not None:
        FAULT_HOOK(path, phase)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a power cut after it cannot bring the old file back)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_with(path: Path, write: Callable[[str], None]) -> None:
    """write(tmp_path) fills a temp file beside `path`; it is fsynced and renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode())
        _fault(path, "tmp-written")
        os.replace(tmp, path)
    except SimulatedKill:
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    _fault(path, "renamed")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, default=str) + "\n" for row in rows))


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise MmbenchError(f"{path}:{number}: not a JSON line ({exc})") from None
    return rows


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MmbenchError(f"{path}: not UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise MmbenchError(f"{path}: cannot read ({exc.strerror or exc})") from None


def remove_leftovers(folder: Path) -> list[Path]:
    """Temp files a killed writer left in a run dir (ours are named `.<target>.<random>.tmp`)."""
    found = []
    for sub in (folder, folder / "checkpoints"):
        if sub.is_dir():
            for path in sub.glob(f".*{TMP_SUFFIX}"):
                if path.is_file():
                    path.unlink(missing_ok=True)
                    found.append(path)
    return found


@contextlib.contextmanager
def run_lock(folder: Path):
    """Hold <run dir>/train.lock while training (mmbench.results.locks: released by the kernel when the
    process dies, however it dies; a held lock is what `status` calls running); a second process gets
    one line naming the holder."""
    from mmbench.results import locks

    path = folder / LOCK_FILE
    try:
        with locks.hold(path):
            os.chmod(path, _file_mode())
            yield
    except locks.LockHeld as exc:
        raise MmbenchError(f"{folder}: run dir is in use by {exc.holder} (lock {path}); wait for it or stop that process") from None


@contextlib.contextmanager
def reader_lock(folder: Path):
    """Hold <run dir>/train.lock shared while reading a run (eval): several readers may hold it at
    once, a trainer (exclusive, `run_lock`) may not; a run being trained is refused in one line, so a
    reader never runs checkpoint recovery beside a live trainer or reads a half-committed best."""
    from mmbench.results import locks

    path = folder / LOCK_FILE
    try:
        with locks.read(path, _file_mode()):
            yield
    except locks.LockHeld:
        raise MmbenchError(f"{folder}: run is being trained (lock {path} held); evaluate it when training "
                           "has finished or stopped") from None


def check_resume(out: Path) -> None:
    """`train --resume` means "continue this run": one line when there is nothing to continue. A run dir
    that exists continues (even one killed before its first checkpoint); a missing one names the run
    dirs of the same recipe and seed that do exist (another config hash: the recipe file or --set
    changed); a finished run whose checkpoints/last.pt is gone would silently retrain from scratch."""
    last = out / "checkpoints" / "last.pt"
    if not out.is_dir():
        seed = out.name.split("-")[0]
        others = sorted(p for p in out.parent.glob(f"{seed}-*") if p.is_dir() and p != out) if out.parent.is_dir() else []
        found = (f"; {others[0]} is this recipe and seed with config hash {others[0].name.split('-', 1)[-1]}"
                 f"{f' (and {len(others) - 1} more)' if len(others) > 1 else ''}: the recipe file or --set changed since "
                 "that run; continue it with its old settings" if others else "")
        raise MmbenchError(f"--resume: no run to continue at {out}{found}, or drop --resume to start a fresh run")
    trained = (out / METRICS_FILE).exists() or bool((out / "log.jsonl").is_file() and (out / "log.jsonl").stat().st_size)
    if trained and not last.is_file():
        raise MmbenchError(f"--resume: {last} is gone, so {out} cannot be continued (resuming would retrain it from "
                           "scratch); drop --resume to retrain it")


def run_dir(resolved, seed: int, root: Path | None = None) -> Path:
    recipe_leaf = resolved.name.split("/")[-1] + ("-smoke" if resolved.smoke else "")
    base = (root or runs_root()) / resolved.recipe.paper / resolved.recipe.dataset / recipe_leaf
    return base / f"seed{seed}-{resolved.config_hash}"


def git_state() -> dict[str, Any]:
    from mmbench.paths import checkout_root

    if checkout_root() is None:  # an installed wheel: a git repository around site-packages is not ours
        return {"git_commit": None, "git_dirty": None}

    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return {"git_commit": commit.stdout.strip() or None, "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def environment(device, precision: str, world_size: int) -> dict[str, Any]:
    import torch
    import transformers

    env = {
        **git_state(),
        "mmbench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "precision": precision,
        "world_size": world_size,
        "torch_threads": torch.get_num_threads(),
    }
    return env


def load_metrics(path: Path) -> dict | None:
    """A run's metrics.json (None when the run has not finished); a corrupt one is one line naming it."""
    file = path / METRICS_FILE if path.is_dir() else path
    if not file.exists():
        return None
    try:
        data = json.loads(_read_text(file))
    except ValueError as exc:
        raise MmbenchError(f"{file}: corrupt metrics file ({exc}); delete it and re-run with --resume") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise MmbenchError(f"{file}:metrics: not a run's metrics file (no metrics mapping); delete it and re-run with --resume")
    _check_metrics_values(file, data)
    return data


_IDENTITY = {"recipe": str, "config_hash": str, "seed": int, "paper": str, "dataset": str}


def _check_metrics_values(file: Path, data: dict) -> None:
    """Every value a report reads: metrics.<split>.<name> a finite number, the run's identity fields of
    their type; one that is not names its key (report skips the file with one warning)."""
    import math

    def bad(key: str, value) -> MmbenchError:
        return MmbenchError(f"{file}:{key}: {json.dumps(value)[:40]} is not what a run writes; delete the file and re-run with --resume")

    for split, values in data["metrics"].items():
        if not isinstance(values, dict):
            raise bad(f"metrics.{split}", values)
        for name, value in values.items():  # None: a metric the run could not compute (aggregation skips it)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
                raise bad(f"metrics.{split}.{name}", value)
    for key, kind in _IDENTITY.items():
        value = data.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise bad(key, value)


def find_runs(root: Path | None = None, warn: Callable[[str], None] | None = None) -> list[dict]:
    """Every finished run (metrics.json) below the runs root, with its directory. A corrupt
    metrics.json is skipped with a one-line warning (on stderr), so one bad run never breaks a report."""
    root = root or runs_root()
    warn = warn or (lambda message: print(message, file=sys.stderr))
    found = []
    for file in sorted(root.glob(f"*/*/*/*/{METRICS_FILE}")):
        try:
            data = load_metrics(file)
        except MmbenchError as exc:
            warn(f"warning: skipped {exc}")
            continue
        data["run_dir"] = str(file.parent)
        found.append(data)
    return _drop_copies(found, warn)


def _drop_copies(runs: list[dict], warn: Callable[[str], None]) -> list[dict]:
    """A run is its recipe, config hash and seed, not its folder: a copied run dir (`cp -r RUN RUN.bak`)
    is counted once, with one warning naming both folders. The kept one is the folder `run_dir` names
    (seed<k>-<hash>), else the first in sorted order."""
    by_identity: dict[tuple, list[dict]] = {}
    for run in runs:
        key = (run.get("recipe"), run.get("config_hash"), run.get("seed"), bool(run.get("smoke")))
        by_identity.setdefault(key, []).append(run)
    kept_ids = set()
    for (recipe, config_hash, seed, _), group in by_identity.items():
        canonical = [r for r in group if Path(r["run_dir"]).name == f"seed{seed}-{config_hash}"]
        kept = (canonical or group)[0]
        kept_ids.add(id(kept))
        for other in group:
            if other is not kept:
                warn(f"warning: {other['run_dir']} is a copy of run {kept['run_dir']} (same recipe {recipe}, config hash "
                     f"{config_hash}, seed {seed}); counted once")
    return [run for run in runs if id(run) in kept_ids]
