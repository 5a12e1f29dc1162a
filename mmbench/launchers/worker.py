"""Train one run of a plan from a JSON spec (`mmbench.launchers.Job.spec`): in a child process of
the `gpus` launcher (`python -m mmbench.launchers.worker SPEC`) or a submitit job on a cluster node.
Records the run's state in its launch.json; exits 1 (raises, under submitit) when the run fails.
The worker holds the run dir's lock (mmbench.results.locks) for its whole life, so two launchers
started on one plan at the same moment never both train a run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path


HELD_EXIT = 3  # the run dir is being trained by another process
# set by `requeued` (the slurm job's checkpoint hook, inside submitit's signal handler): the SystemExit
# that follows is a requeue, not a failure
_REQUEUED: dict[str, str] = {}


def run_job(spec: dict, launcher: str = "gpus", job_id: str | None = None) -> dict:
    os.environ.update(spec.get("env") or {})  # the submitting process's folders and recipe search path
    run_dir = Path(spec["run_dir"])
    from mmbench.results import locks, store

    stack = contextlib.ExitStack()
    try:  # the trainer takes the same lock again (re-entrant within this process)
        stack.enter_context(locks.hold(run_dir / store.LOCK_FILE, share=True))
    except locks.LockHeld as exc:
        print(f"{run_dir}: another process is training this run ({exc.holder}); leaving it to that one", flush=True)
        return {"state": "running", "run_dir": str(run_dir), "held": True}
    with stack:
        return _run_locked(spec, run_dir, launcher, job_id)


def requeued(run_dir: Path, reason: str) -> None:
    """The job is about to be requeued (time limit or preemption): the run resumes from last.pt."""
    from mmbench.launchers import write_launch

    _REQUEUED[str(run_dir)] = reason
    write_launch(run_dir, state="queued", error=None, requeued=reason)


def check_gpu(device: str | None) -> None:
    """A gpus-launcher child was given a GPU (CUDA_VISIBLE_DEVICES): refuse to train when torch cannot
    see it (a broken driver would otherwise train on the CPU without a word)."""
    import torch

    from mmbench.errors import MmbenchError

    if device == "cpu":
        return
    if not torch.cuda.is_available() or torch.cuda.device_count() < 1:
        raise MmbenchError(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')} was given to this run but torch sees "
                           "no GPU (driver or CUDA problem?); refusing to train on the CPU (--device cpu to mean it)")


def _run_locked(spec: dict, run_dir: Path, launcher: str, job_id: str | None) -> dict:
    from mmbench.launchers import read_launch, write_launch
    from mmbench.results import store

    if (run_dir / store.METRICS_FILE).exists():
        return {"state": "done", "run_dir": str(run_dir), "skipped": True}
    job_id = job_id or os.environ.get("SLURM_JOB_ID") or read_launch(run_dir).get("job_id")
    write_launch(run_dir, state="running", launcher=launcher, job_id=job_id, host=socket.gethostname(), pid=os.getpid(),
                 cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"), started=time.time(), error=None, requeued=None)
    try:
        from mmbench.engine.trainer import fit
        from mmbench.errors import MmbenchError
        from mmbench.recipes.loader import resolve

        if launcher == "gpus":
            check_gpu(spec.get("device"))
        resolved = resolve(spec["recipe"], spec["overrides"], smoke=spec["smoke"])
        if store.run_dir(resolved, spec["seed"]).resolve() != run_dir.resolve():
            raise MmbenchError(f"{spec['recipe']} now resolves to {store.run_dir(resolved, spec['seed'])}, not {run_dir} "
                               "(recipes or --recipes folders changed since the plan was made)")
        fit(resolved, spec["seed"], resume=True, device=spec.get("device"), log=lambda m: print(m, flush=True))
    except BaseException as exc:
        _record_end(run_dir, exc)
        raise
    write_launch(run_dir, state="done", finished=time.time())
    return {"state": "done", "run_dir": str(run_dir)}


def _record_end(run_dir: Path, exc: BaseException) -> None:
    """A requeue keeps its `queued`; Ctrl-C / SIGTERM is `interrupted` (resumable); anything else (a job
    past its time limit more than max_requeues times included) failed, with the exception's message."""
    from mmbench.launchers import write_launch

    if str(run_dir) in _REQUEUED and isinstance(exc, SystemExit):  # submitit exits the job to requeue it
        print(f"requeued ({_REQUEUED[str(run_dir)]}); the next job resumes from checkpoints/last.pt", flush=True)
        return
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        write_launch(run_dir, state="interrupted", finished=time.time(), error=None)
        return
    traceback.print_exc()
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    write_launch(run_dir, state="failed", finished=time.time(), error=f"{type(exc).__name__}: {message}")


def _terminate(signum, frame):  # SIGTERM → the same clean path as Ctrl-C
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    signal.signal(signal.SIGTERM, _terminate)
    try:
        result = run_job(spec, launcher="gpus")
    except KeyboardInterrupt:
        return 128 + signal.SIGTERM
    except Exception:  # already recorded in launch.json and printed to the run's launch.log
        return 1
    return HELD_EXIT if result.get("held") else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
