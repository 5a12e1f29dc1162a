"""What `mmbench status` says of one run dir: done, running (its lock is held), queued, failed,
partial (resumable) or missing, with progress inside a running run. Kept apart from the launch
records (`mmbench.launchers`) because it asks the slurm launcher about its jobs."""

from __future__ import annotations

import json
from pathlib import Path

from mmbench.launchers import QUEUED_NOTE, launch_problem, read_launch
from mmbench.results import store


def run_state(run_dir: Path, epochs: int | None = None) -> tuple[str, str]:
    """(state, detail) of one run dir; state is one of STATES. A damaged launch.json is named in the detail."""
    state, detail = _run_state(run_dir, epochs)
    problem = launch_problem(run_dir)
    return state, "; ".join(part for part in (detail, problem) if part)


def _run_state(run_dir: Path, epochs: int | None = None) -> tuple[str, str]:
    """Liveness is the run dir's lock: held means a process is training it (or a gpus launcher holds it in
    its queue), whatever launch.json says."""
    from mmbench.results import locks

    if (run_dir / store.METRICS_FILE).exists():
        return "done", ""
    holder = locks.holder(run_dir / store.LOCK_FILE)
    if holder and holder.startswith(QUEUED_NOTE):
        return "queued", holder
    if holder:  # a launcher's worker, a `mmbench train --resume` or a local reproduce, training it right now
        return "running", "; ".join(x for x in (f"held by {holder}", progress(run_dir, epochs)) if x)
    launch = read_launch(run_dir)
    state = launch.get("state")
    if state in ("queued", "running") and launch.get("launcher") == "slurm":
        from mmbench.launchers.slurm import cluster_state, job_id

        if not job_id(launch):
            return "failed", "slurm submission did not complete (no job id)"
        state = cluster_state(launch) or state
        if state == "queued" or (state == "running" and (launch.get("cluster") or "slurm") == "slurm"):
            where = f"slurm job {job_id(launch)}" + (f" (requeued: {launch['requeued']})" if launch.get("requeued") else "")
            return state, "; ".join(x for x in (where, progress(run_dir, epochs) if state == "running" else "") if x)
    if state == "failed":
        return "failed", launch.get("error") or "failed"
    if (run_dir / "checkpoints" / "last.pt").exists():
        why = {"interrupted": "interrupted", "running": "its process stopped without finishing"}.get(state, "unfinished")
        return "partial", "; ".join(x for x in (f"{why}; the next launch resumes from checkpoints/last.pt", progress(run_dir, epochs)) if x)
    return "missing", ""


def progress(run_dir: Path, epochs: int | None) -> str:
    """'epoch k/N, step S, ETA …' from the run's log.jsonl (one row per finished epoch)."""
    try:
        rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return ""
    if not rows:
        return "epoch 0" + (f"/{epochs}" if epochs else "")
    steps = sum(int(r.get("steps") or 0) for r in rows)
    text = f"epoch {len(rows)}" + (f"/{epochs}" if epochs else "") + f" done, step {steps}"
    seconds = [float(r["seconds"]) for r in rows if isinstance(r.get("seconds"), (int, float))]
    if epochs and seconds and epochs > len(rows):
        text += f", ETA {_duration(sum(seconds) / len(seconds) * (epochs - len(rows)))}"
    return text


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{seconds:.0f}s" if seconds < 90 else f"{minutes} min" if minutes < 90 else f"{minutes / 60:.1f} h"
