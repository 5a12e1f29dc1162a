"""`--launcher slurm`: one submitit job per run (submitit is what Hydra's Slurm launcher uses; optional
dependency `mmbench[slurm]`). Options come from a `launcher:` section of a YAML file
(`--launcher-config`) and the command line, the command line winning:

    launcher:
      partition: gpu          # sbatch --partition
      time: "12:00:00"        # sbatch --time (minutes or [D-]HH:MM:SS); default 24:00:00
      signal_delay_s: 120     # the time-limit/preemption signal comes this long before the end
      max_requeues: 10        # a run past its time limit is requeued (resuming from last.pt) this often
      gpus_per_task: 1
      cpus_per_task: 8
      mem_gb: 64
      sbatch: {account: my-lab, qos: normal}   # any other sbatch option
      setup: ["source ~/venvs/mmbench/bin/activate"]   # lines run before the job
      cluster: slurm          # submitit's executor: slurm, or local/debug to try it without a cluster

Each job's submitit files (stdout, stderr, pickles) are in `<run dir>/slurm/`. A job is a
`TrainJob`, which submitit requeues with the same spec when it hits its time limit or is preempted:
the requeued job resumes the run from `checkpoints/last.pt` (the epoch in progress is trained again)
and ends with the metrics of an uninterrupted run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from mmbench.errors import MmbenchError
from mmbench.launchers import Job, write_launch

DEFAULT_TIME = "24:00:00"
INSTALL_HINT = "--launcher slurm needs submitit, which is not installed: pip install 'mmbench[slurm]' (or pip install submitit)"
_CLUSTER_STATES = {"PENDING": "queued", "CONFIGURING": "queued", "REQUEUED": "queued", "RUNNING": "running",
                   "COMPLETING": "running", "FAILED": "failed", "CANCELLED": "failed", "TIMEOUT": "failed",
                   "NODE_FAIL": "failed", "OUT_OF_MEMORY": "failed", "PREEMPTED": "failed", "COMPLETED": "failed"}


@dataclass
class SlurmOptions:
    partition: str | None = None
    time: str | int | None = None
    gpus_per_task: int = 1
    cpus_per_task: int | None = None
    mem_gb: int | None = None
    sbatch: dict[str, str] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    cluster: str | None = None
    signal_delay_s: int | None = None
    max_requeues: int = 10

    @classmethod
    def load(cls, config: Path | None, **cli) -> "SlurmOptions":
        data = {}
        if config is not None:
            from mmbench.recipes.loader import read_yaml

            data = read_yaml(config).get("launcher") or {}
            if not isinstance(data, dict):
                raise MmbenchError(f"{config}: launcher: must be a mapping")
            unknown = sorted(set(data) - set(cls.__dataclass_fields__))
            if unknown:
                raise MmbenchError(f"{config}: launcher.{unknown[0]}: unknown key (known: {', '.join(cls.__dataclass_fields__)})")
        sbatch = {**(data.pop("sbatch", None) or {}), **(cli.pop("sbatch", None) or {})}
        data.update({k: v for k, v in cli.items() if v is not None})
        return cls(**data, sbatch={str(k): str(v) for k, v in sbatch.items()})

    def timeout_min(self) -> int:
        """Minutes; without `time:` DEFAULT_TIME (submitit's own defaults, 2 min locally and 5 on Slurm,
        would end every training run early)."""
        if self.time is None:
            return SlurmOptions(time=DEFAULT_TIME).timeout_min()
        if isinstance(self.time, int) or str(self.time).isdigit():
            return int(self.time)
        days, _, clock = str(self.time).rpartition("-")
        parts = [int(p) for p in clock.split(":")]
        if len(parts) != 3:
            raise MmbenchError(f"launcher time {self.time!r}: expected minutes or [D-]HH:MM:SS")
        return int(days or 0) * 1440 + parts[0] * 60 + parts[1] + (parts[2] > 0)

    def executor_parameters(self, name: str) -> dict:
        params = {"name": name, "timeout_min": self.timeout_min(), "gpus_per_node": self.gpus_per_task, "tasks_per_node": 1,
                  "nodes": 1, "cpus_per_task": self.cpus_per_task, "mem_gb": self.mem_gb, "slurm_partition": self.partition,
                  "slurm_additional_parameters": self.sbatch or None, "slurm_setup": self.setup or None,
                  "slurm_signal_delay_s": self.signal_delay_s}
        return {k: v for k, v in params.items() if v is not None}


def _submitit():
    try:
        import submitit
    except ImportError:
        raise MmbenchError(INSTALL_HINT) from None
    return submitit


class TrainJob:
    """What runs on the node (pickled by reference). submitit calls `checkpoint` when the job hits its
    time limit or is preempted (its signal, `signal_delay_s` before the end): the job is requeued with
    the same spec and the run resumes from last.pt (`fit(resume=True)`)."""

    def __call__(self, spec: dict) -> dict:
        import submitit

        from mmbench.launchers.worker import run_job

        return run_job(spec, launcher="slurm", job_id=str(submitit.JobEnvironment().job_id))

    def checkpoint(self, spec: dict):
        import submitit

        from mmbench.launchers.worker import requeued

        requeued(Path(spec["run_dir"]), "time limit or preemption")
        return submitit.helpers.DelayedSubmission(self, spec)


def submit(jobs: list[Job], options: SlurmOptions, log) -> list:
    submitit = _submitit()
    submitted = []
    for job in jobs:
        folder = job.run_dir / "slurm"
        folder.mkdir(parents=True, exist_ok=True)
        try:  # cluster "slurm" unless the config says local/debug: never fall back to running here silently
            executor = submitit.AutoExecutor(folder=folder, cluster=options.cluster or "slurm",
                                             slurm_max_num_timeout=options.max_requeues, local_max_num_timeout=options.max_requeues)
        except RuntimeError as exc:
            raise MmbenchError(f"--launcher slurm: {exc} (to try the launcher on this machine: a --launcher-config "
                               "with launcher: {cluster: local})") from None
        executor.update_parameters(**options.executor_parameters(f"mmbench-{job.recipe.replace('/', '-')}-s{job.seed}"))
        if options.cluster == "local" and options.signal_delay_s is not None:  # AutoExecutor has no local_ key for it
            executor._executor.update_parameters(signal_delay_s=options.signal_delay_s)
        (folder / "job_id").unlink(missing_ok=True)
        write_launch(job.run_dir, state="queued", launcher="slurm", cluster=options.cluster or "slurm", folder=str(folder),
                     job_id=None, error=None, options=asdict(options))
        try:
            handle = executor.submit(TrainJob(), job.spec())
        except Exception as exc:  # sbatch refused it (bad partition, account, ...): the run is not queued
            write_launch(job.run_dir, state="failed", error=f"submission failed: {exc}")
            raise MmbenchError(f"--launcher slurm: submitting {job.label} failed: {str(exc).strip().splitlines()[-1]}") from None
        (folder / "job_id").write_text(f"{handle.job_id}\n")
        log(f"submitted {job.label} as job {handle.job_id} (logs: {folder})")
        submitted.append((job, handle))
    return submitted


def wait(submitted: list, log) -> list[tuple[Job, str, str]]:
    results = []
    for job, handle in submitted:
        try:
            if handle.result().get("held"):
                results.append((job, "running", "another process is training it"))
                log(f"held  {job.label}: another process is training it")
                continue
            results.append((job, "done", ""))
            log(f"done  {job.label}")
        except Exception as exc:
            detail = failure_cause(exc, job.run_dir)
            results.append((job, "failed", f"{detail} (logs: {job.run_dir / 'slurm'})"))
            log(f"FAIL  {job.label}: {detail}")
    return results


def failure_cause(exc: Exception, run_dir: Path) -> str:
    """The exception that ended the job, in one line: what the worker recorded in launch.json, else the
    last line of the traceback submitit wraps (its message ends with log paths, not the cause)."""
    from mmbench.launchers import read_launch

    recorded = read_launch(run_dir)
    if recorded.get("state") == "failed" and recorded.get("error"):
        return recorded["error"]
    text = str(exc).split("\nYou can check full logs")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip() and not set(line.strip()) <= {"-"}]
    return lines[-1] if lines else type(exc).__name__


def job_id(launch: dict) -> str | None:
    """The job id: recorded by the worker once it runs, or by `submit` beside the submitit files."""
    job_file = Path(launch.get("folder") or "/nonexistent") / "job_id"
    return launch.get("job_id") or (job_file.read_text().strip() if job_file.exists() else None)


def cluster_state(launch: dict) -> str | None:
    """The scheduler's view of a queued/running slurm job (sacct through submitit), or None if unknown."""
    if (launch.get("cluster") or "slurm") != "slurm" or not launch.get("folder"):
        return None
    job = job_id(launch)
    if not job:
        return None
    try:
        import submitit

        return _CLUSTER_STATES.get(submitit.SlurmJob(folder=launch["folder"], job_id=job).state.split()[0])
    except Exception:  # no sacct here, or the job is too old: fall back to what launch.json says
        return None
