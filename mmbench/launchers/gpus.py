"""`--launcher gpus`: the runs of a plan as a queue over this machine's GPUs, one child process per
GPU at a time, each pinned with CUDA_VISIBLE_DEVICES (so it sees its GPU as cuda:0). A failed run
is recorded and reported at the end; the others go on. Each child's stdout and stderr go to
`launch.log` in its run dir. Runs waiting for a GPU are held (their run-dir lock, labelled queued) by
this process, so `status` shows them queued; Ctrl-C or SIGTERM stops the children and leaves their
runs interrupted (resumable)."""

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
from mmbench.launchers import LOG_FILE, QUEUED_NOTE, Job, read_launch, write_launch
from mmbench.launchers.worker import HELD_EXIT
from mmbench.results import locks, store


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
    write_launch(job.run_dir, state="queued", launcher="gpus", job_id=None, gpu=gpu, error=None)
    env = {**os.environ, **job.env, "CUDA_VISIBLE_DEVICES": gpu, "PYTHONUNBUFFERED": "1"}
    with open(job.run_dir / LOG_FILE, "ab") as log:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {job.label} on CUDA_VISIBLE_DEVICES={gpu}\n".encode())
        return subprocess.Popen([sys.executable, "-m", "mmbench.launchers.worker", json.dumps(job.spec())],
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _enqueue(jobs: list[Job], log) -> tuple[deque, dict, dict]:
    """Hold every job's run-dir lock while it waits (so `status` shows it queued and no other launcher
    takes it; released when this process ends, however it ends); a run another process holds is left."""
    queue, holds, held = deque(), {}, {}
    note = f"{QUEUED_NOTE} the gpus launcher, {locks.me()}"
    for job in jobs:
        job.run_dir.mkdir(parents=True, exist_ok=True)
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(locks.hold(job.run_dir / store.LOCK_FILE, note, wait_s=0))
        except locks.LockHeld as exc:
            held[id(job)] = (job, "running", f"held by {exc.holder}")
            log(f"held  {job.label}: {exc.holder}")
            continue
        write_launch(job.run_dir, state="queued", launcher="gpus", job_id=None, error=None)
        queue.append(job)
        holds[id(job)] = stack
    return queue, holds, held


def run(jobs: list[Job], gpus: list[str], log, poll_s: float = 0.2) -> list[tuple[Job, str, str]]:
    """Run every job; [(job, 'done'|'failed'|'running', detail)] in plan order."""
    queue, holds, results = _enqueue(jobs, log)
    active = {}
    # SIGTERM/SIGHUP: the same clean stop as Ctrl-C (by default Python dies on them at once and the
    # workers train on as orphans); signal handlers can only be set from the main thread
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)} if main else {}
    try:
        while queue or active:
            for gpu in gpus:
                if gpu not in active and queue:
                    job = queue.popleft()
                    log(f"start {job.label} on GPU {gpu} (log: {job.run_dir / LOG_FILE})")
                    holds.pop(id(job)).close()  # the child takes the lock over
                    active[gpu] = (job, _start(job, gpu))
            time.sleep(poll_s)
            for gpu, (job, proc) in list(active.items()):
                if proc.poll() is None:
                    continue
                del active[gpu]
                results[id(job)] = _ended(job, proc.returncode, log)
    finally:
        for job, proc in active.values():  # interrupted: stop the children, their runs resume next time
            proc.terminate()
        for job, proc in active.values():
            _wait_or_kill(proc)
            if read_launch(job.run_dir).get("state") not in ("done", "failed"):
                write_launch(job.run_dir, state="interrupted", error=None)
        for job in queue:
            write_launch(job.run_dir, state="interrupted", error=None)
        for stack in holds.values():
            stack.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return [results[id(job)] for job in jobs]


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _ended(job: Job, code: int, log) -> tuple[Job, str, str]:
    if code == 0:
        log(f"done  {job.label}")
        return job, "done", ""
    if code == HELD_EXIT:
        log(f"held  {job.label}: another process is training it")
        return job, "running", "another process is training it"
    error = read_launch(job.run_dir).get("error") or f"exit code {code}"
    if read_launch(job.run_dir).get("state") != "failed":  # died before the worker could say so
        write_launch(job.run_dir, state="failed", error=error)
    log(f"FAIL  {job.label}: {error}")
    return job, "failed", f"{error} (log: {job.run_dir / LOG_FILE})"


def _wait_or_kill(proc: subprocess.Popen, seconds: float = 10.0) -> None:
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
