"""Train one run of a plan from a JSON spec (`mmbench.launchers.Job.spec`): in a child process of
the `gpus` launcher (`python -m mmbench.launchers.worker SPEC`) or a submitit job on a cluster node.
Records the run's state in its launch.json; exits 1 (raises, under submitit) when the run fails."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path


HELD_EXIT = 3  # the run dir is being trained by another launcher's worker


@contextlib.contextmanager
def _launch_lock(run_dir: Path):
    """An exclusive POSIX lock on <run dir>/launch.lock while a worker trains there (released when the
    process dies; fcntl locks also hold across NFS clients), so two launchers started on the same plan
    at the same moment cannot both train one run. Yields False when another worker holds it."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "launch.lock", "a+") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def run_job(spec: dict, launcher: str = "gpus", job_id: str | None = None) -> dict:
    os.environ.update(spec.get("env") or {})  # the submitting process's folders and recipe search path
    run_dir = Path(spec["run_dir"])
    with _launch_lock(run_dir) as mine:
        if not mine:
            print(f"{run_dir}: another launcher's worker is training this run; leaving it to that one", flush=True)
            return {"state": "running", "run_dir": str(run_dir), "held": True}
        return _run_locked(spec, run_dir, launcher, job_id)


def _run_locked(spec: dict, run_dir: Path, launcher: str, job_id: str | None) -> dict:
    from mmbench.launchers import read_launch, write_launch
    from mmbench.results import store

    if (run_dir / store.METRICS_FILE).exists():
        return {"state": "done", "run_dir": str(run_dir), "skipped": True}
    job_id = job_id or os.environ.get("SLURM_JOB_ID") or read_launch(run_dir).get("job_id")
    write_launch(run_dir, state="running", launcher=launcher, job_id=job_id, host=socket.gethostname(), pid=os.getpid(),
                 cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"), started=time.time(), error=None)
    try:
        from mmbench.engine.trainer import fit
        from mmbench.errors import MmbenchError
        from mmbench.recipes.loader import resolve

        resolved = resolve(spec["recipe"], spec["overrides"], smoke=spec["smoke"])
        if store.run_dir(resolved, spec["seed"]).resolve() != run_dir.resolve():
            raise MmbenchError(f"{spec['recipe']} now resolves to {store.run_dir(resolved, spec['seed'])}, not {run_dir} "
                               "(recipes or --recipes folders changed since the plan was made)")
        fit(resolved, spec["seed"], resume=True, device=spec.get("device"), log=lambda m: print(m, flush=True))
    except BaseException as exc:
        traceback.print_exc()
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        write_launch(run_dir, state="failed", finished=time.time(), error=f"{type(exc).__name__}: {message}")
        raise
    write_launch(run_dir, state="done", finished=time.time())
    return {"state": "done", "run_dir": str(run_dir)}


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    try:
        result = run_job(spec, launcher="gpus")
    except Exception:  # already recorded in launch.json and printed to the run's launch.log
        return 1
    return HELD_EXIT if result.get("held") else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
