"""Where `mmbench reproduce` trains the runs of a plan: `local` (this process, one after another),
`gpus` (one child process per GPU of this machine, `mmbench.launchers.gpus`) or `slurm` (one
submitit job per run, `mmbench.launchers.slurm`).

Every launcher hands a run to `mmbench.launchers.worker.run_job` as a plain-JSON spec, so a child
process or a cluster node re-resolves exactly the recipe the plan resolved (the run dir is checked).
Each run dir gets `launch.json` (state, launcher, job id, host, pid, CUDA_VISIBLE_DEVICES, times, the
error of a failed run) next to the trainer's own files; `mmbench status` reads it. Finished runs
(metrics.json) are never handed out again, and runs another launcher has queued or is training are
skipped; the trainer's run-dir lock is the last guard against two processes training one run dir.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from mmbench.results import store

LAUNCH_FILE = "launch.json"
LOG_FILE = "launch.log"
LAUNCHERS = ("local", "gpus", "slurm")
STATES = ("done", "running", "queued", "failed", "partial", "missing")


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _trainer_holder(run_dir: Path) -> str | None:
    """The trainer's lock file (store.LOCK_FILE) names "pid N on HOST"; it is read, never taken (taking it,
    even briefly, could make a trainer starting at that instant fail). Only a live pid on this host counts."""
    try:
        words = (run_dir / store.LOCK_FILE).read_text().split()
    except (OSError, AttributeError, ValueError):  # ValueError: a lock file that is not UTF-8
        return None
    if len(words) == 4 and words[0] == "pid" and words[1].isascii() and words[1].isdigit() and valid_pid(int(words[1])) and words[3] == socket.gethostname() and _pid_alive(int(words[1])):
        return " ".join(words)
    return None


def run_state(run_dir: Path) -> tuple[str, str]:
    """(state, detail) of one run dir; state is one of STATES. A damaged launch.json is named in the detail."""
    state, detail = _run_state(run_dir)
    problem = launch_problem(run_dir)
    return state, "; ".join(part for part in (detail, problem) if part)


def _run_state(run_dir: Path) -> tuple[str, str]:
    if (run_dir / store.METRICS_FILE).exists():
        return "done", ""
    holder = _trainer_holder(run_dir)
    if holder:  # e.g. a `mmbench train --resume` or a local reproduce training it right now
        return "running", f"trainer {holder}"
    launch = read_launch(run_dir)
    state = launch.get("state")
    if state == "running" and launch.get("host") == socket.gethostname() and launch.get("pid") and not _pid_alive(launch["pid"]):
        return "failed", f"process {launch['pid']} on {launch['host']} stopped without finishing (see {run_dir / LOG_FILE})"
    if state in ("queued", "running") and launch.get("launcher") == "slurm":
        from mmbench.launchers.slurm import cluster_state, job_id

        if not job_id(launch):
            return "failed", "slurm submission did not complete (no job id)"
        state = cluster_state(launch) or state
        launch["job_id"] = job_id(launch)
    if state in ("queued", "running"):
        where = f"job {launch['job_id']}" if launch.get("job_id") else f"pid {launch.get('pid')} on {launch.get('host')}"
        return state, f"{launch.get('launcher', '?')} {where}"
    if state == "failed":
        return "failed", launch.get("error") or "failed"
    if (run_dir / "checkpoints" / "last.pt").exists():
        return "partial", "checkpoints/last.pt exists; the next launch resumes it"
    return "missing", ""


def summarize(results: list[tuple[Job, str, str]], log) -> int:
    """Print failures per run after all runs ended; the number of failed runs."""
    failed = [(job, detail) for job, state, detail in results if state == "failed"]
    counts = {s: sum(1 for _, state, _ in results if state == s) for s in STATES}
    log("runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    for job, detail in failed:
        log(f"FAILED {job.label}: {detail} → {job.run_dir}")
    return len(failed)
