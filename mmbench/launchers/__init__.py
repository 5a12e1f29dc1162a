"""Where `mmbench reproduce` trains the runs of a plan: `local` (this process, one after another),
`gpus` (one child process per GPU of this machine, `mmbench.launchers.gpus`) or `slurm` (one
submitit job per run, `mmbench.launchers.slurm`).

Every launcher hands a run to `mmbench.launchers.worker.run_job` as a plain-JSON spec, so a child
process or a cluster node re-resolves exactly the recipe the plan resolved (the run dir is checked).
Each run dir gets `launch.json` (state, launcher, job id, host, pid, CUDA_VISIBLE_DEVICES, times, the
error of a failed run) next to the trainer's own files; `mmbench status` reads it. Whether a run is
alive is its run dir's lock (`train.lock`, mmbench.results.locks), held by the process training it or
by the gpus launcher queueing it; launch.json only says how a run that nobody holds ended. Finished
runs (metrics.json) are never handed out again, and runs another process holds are skipped.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from mmbench.results import store

LAUNCH_FILE = "launch.json"
LOG_FILE = "launch.log"
LAUNCHERS = ("local", "gpus", "slurm")
STATES = ("done", "running", "queued", "failed", "partial", "missing")
# launch.json "state": queued, running, done, failed, interrupted (Ctrl-C/SIGTERM: partial, resumable)


@dataclass
class Job:
    recipe: str
    overrides: list[str]
    smoke: bool
    seed: int
    run_dir: Path
    device: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.recipe} seed {self.seed}" + (f" [{' '.join(self.overrides)}]" if self.overrides else "")

    def spec(self) -> dict:
        """What a worker needs, as JSON: the recipe name, overrides, seed and the folders it must use."""
        return {"recipe": self.recipe, "overrides": list(self.overrides), "smoke": self.smoke, "seed": self.seed,
                "device": self.device, "run_dir": str(self.run_dir), "env": dict(self.env)}


def worker_env() -> dict[str, str]:
    """Absolute data/runs roots and the recipe search path of this process, for workers elsewhere."""
    from mmbench.paths import RECIPES_ENV, data_root, runs_root

    env = {"MMBENCH_DATA": str(data_root().resolve()), "MMBENCH_RUNS": str(runs_root().resolve())}
    if os.environ.get(RECIPES_ENV):
        env[RECIPES_ENV] = os.pathsep.join(str(Path(p).resolve()) for p in os.environ[RECIPES_ENV].split(os.pathsep) if p)
    for name in ("MMBENCH_THREADS", "MMBENCH_RESULTS"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def make_jobs(pairs, device: str | None) -> list[Job]:
    """(resolved recipe, seed) pairs of a plan → jobs."""
    env = worker_env()
    return [Job(r.name, list(r.overrides), r.smoke, seed, store.run_dir(r, seed).resolve(), device, env) for r, seed in pairs]


def read_launch(run_dir: Path) -> dict:
    """The run's launch record, or {} when there is none or it is damaged (see `launch_problem`)."""
    return _read_launch(run_dir)[0]


def launch_problem(run_dir: Path) -> str | None:
    """What is wrong with a run's launch.json (not JSON, not an object, a pid that is no pid), or None.
    Every file `status` reads is untrusted: a damaged one is reported on the run's row and ignored."""
    return _read_launch(run_dir)[1]


def _read_launch(run_dir: Path) -> tuple[dict, str | None]:
    path = run_dir / LAUNCH_FILE
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        return {}, f"{path}: unreadable ({type(exc).__name__}), ignored"
    if not isinstance(data, dict):
        return {}, f"{path}: a JSON {type(data).__name__}, not a launch record, ignored"
    pid = data.get("pid")
    if pid is not None and not valid_pid(pid):
        data.pop("pid")
        return data, f"{path}:pid: {json.dumps(pid)[:30]} is not a process id, ignored"
    return data, None


def valid_pid(pid) -> bool:
    return isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2**22  # Linux's pid_max limit


def write_launch(run_dir: Path, **fields) -> dict:
    """Merge fields into the run's launch.json (written atomically)."""
    data = {**read_launch(run_dir), **fields, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    store.atomic_write_json(run_dir / LAUNCH_FILE, data)
    return data


QUEUED_NOTE = "queued by"  # how a launcher's queue labels the run-dir locks it holds (mmbench.results.locks)


def summarize(results: list[tuple[Job, str, str]], log) -> int:
    """Print failures per run after all runs ended; the number of failed runs."""
    failed = [(job, detail) for job, state, detail in results if state == "failed"]
    counts = {s: sum(1 for _, state, _ in results if state == s) for s in STATES}
    log("runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    for job, detail in failed:
        log(f"FAILED {job.label}: {detail} → {job.run_dir}")
    return len(failed)
