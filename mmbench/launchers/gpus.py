"""`--launcher gpus`: the runs of a plan as a queue over this machine's GPUs, one child process per
GPU at a time, each pinned with CUDA_VISIBLE_DEVICES (so it sees its GPU as cuda:0). A failed run
is recorded and reported at the end; the others go on. Each child's stdout and stderr go to
`launch.log` in its run dir."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque

from mmbench.errors import MmbenchError
from mmbench.launchers import LOG_FILE, Job, read_launch, write_launch
from mmbench.launchers.worker import HELD_EXIT


def visible_gpus(option: str | None) -> list[str]:
    """`--gpus 0,1,3` as given (values for CUDA_VISIBLE_DEVICES); default: every visible GPU."""
    if option:
        ids = [part.strip() for part in option.split(",")]
        if any(not part for part in ids) or len(set(ids)) != len(ids):
            raise MmbenchError(f"--gpus {option!r}: expected distinct ids separated by commas, e.g. 0,1,2,3")
        return ids
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [part.strip() for part in visible.split(",") if part.strip()]
    import torch

    if torch.cuda.device_count() == 0:
        raise MmbenchError("--launcher gpus: no GPU visible; pass --gpus 0,1,... or use --launcher local")
    return [str(i) for i in range(torch.cuda.device_count())]


def _start(job: Job, gpu: str) -> subprocess.Popen:
    job.run_dir.mkdir(parents=True, exist_ok=True)
    write_launch(job.run_dir, state="queued", launcher="gpus", job_id=None, gpu=gpu, error=None)
    env = {**os.environ, **job.env, "CUDA_VISIBLE_DEVICES": gpu, "PYTHONUNBUFFERED": "1"}
    with open(job.run_dir / LOG_FILE, "ab") as log:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {job.label} on CUDA_VISIBLE_DEVICES={gpu}\n".encode())
        return subprocess.Popen([sys.executable, "-m", "mmbench.launchers.worker", json.dumps(job.spec())],
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def _signals_raise():
    """SIGTERM/SIGHUP to the launcher raise SystemExit, so the `finally` that stops its workers runs (by
    default Python dies on them at once and the workers train on as orphans)."""
    def stop(signum, frame):
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    """SIGTERM every worker, then SIGKILL the ones still alive after `grace_s`; reap them all."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(jobs: list[Job], gpus: list[str], log, poll_s: float = 0.2) -> list[tuple[Job, str, str]]:
    """Run every job; [(job, 'done'|'failed', detail)] in plan order."""
    with _signals_raise():
        return _run(jobs, gpus, log, poll_s)


def _run(jobs: list[Job], gpus: list[str], log, poll_s: float) -> list[tuple[Job, str, str]]:
    queue, active, results = deque(jobs), {}, {}
    try:
        while queue or active:
            for gpu in gpus:
                if gpu not in active and queue:
                    job = queue.popleft()
                    log(f"start {job.label} on GPU {gpu} (log: {job.run_dir / LOG_FILE})")
                    active[gpu] = (job, _start(job, gpu))
            time.sleep(poll_s)
            for gpu, (job, proc) in list(active.items()):
                if proc.poll() is None:
                    continue
                del active[gpu]
                if proc.returncode == 0:
                    results[id(job)] = (job, "done", "")
                    log(f"done  {job.label}")
                elif proc.returncode == HELD_EXIT:
                    results[id(job)] = (job, "running", "another launcher's worker is training it")
                    log(f"held  {job.label}: another launcher's worker is training it")
                else:
                    error = read_launch(job.run_dir).get("error") or f"exit code {proc.returncode}"
                    if read_launch(job.run_dir).get("state") != "failed":  # died before the worker could say so
                        write_launch(job.run_dir, state="failed", error=error)
                    results[id(job)] = (job, "failed", f"{error} (log: {job.run_dir / LOG_FILE})")
                    log(f"FAIL  {job.label}: {error}")
    finally:  # interrupted (Ctrl-C, SIGTERM, an error): stop the children, their runs resume next time
        _stop([proc for _, proc in active.values()])
        for job, _ in active.values():
            write_launch(job.run_dir, state="failed", error="interrupted")
    return [results[id(job)] for job in jobs]
