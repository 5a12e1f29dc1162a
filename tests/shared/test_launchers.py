"""`reproduce --launcher gpus|slurm` and `mmbench status` (issue 19), on CPU: fake GPU ids for the gpus
launcher (each child sees its own CUDA_VISIBLE_DEVICES), submitit's local and debug executors for
the slurm launcher, so no GPU and no cluster are needed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from pathlib import Path
from typer.testing import CliRunner

from mmbench.cli import app
from mmbench.results import locks
from mmbench.results.store import LOCK_FILE

MINI = """
paper: mini
title: Mini paper (a smoke row and one that cannot start)
tolerances: {{accuracy: 1.0}}
tables:
  - id: t1
    title: "Table 1: mini"
    columns: [{{dataset: twitter15, metric: accuracy, header: "T15 Acc"}}]
    rows:
      - {{label: BERT, recipe: "baselines/{{dataset}}-bert", overrides: ["train.epochs=1"], paper: [74.15]}}
{extra}"""
BROKEN_ROW = '      - {label: Broken, recipe: "baselines/{dataset}-bert", overrides: ["model.text_encoder=/nonexistent/encoder"], paper: [1.0]}\n'


def mmbench(*args: str, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmbench.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


def status(env: dict, paper: str = "mini") -> dict:
    result = mmbench("status", paper, "--dataset", "twitter15", "--smoke", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def mini(mm_env, shared_data_root):
    def make(extra: str = "") -> dict:
        folder = mm_env / "recipes"
        (folder / "mini").mkdir(parents=True, exist_ok=True)
        (folder / "mini" / "paper.yaml").write_text(MINI.format(extra=extra))
        return {"MMBENCH_RECIPES": str(folder), "MMBENCH_DATA": str(shared_data_root), "MMBENCH_RUNS": str(mm_env / "runs"),
                "MMBENCH_THREADS": "1"}
    return make


FOUR_ROWS = "".join(f'      - {{label: "{label}", recipe: "baselines/{{dataset}}-{encoder}", overrides: ["train.epochs=1"{extra}], paper: [70.0]}}\n'
                    for label, encoder, extra in (("RoBERTa", "roberta", ""), ("BERT lr÷2", "bert", ', "train.optimizers.main.lr=5.0e-4"'),
                                                  ("RoBERTa lr÷2", "roberta", ', "train.optimizers.main.lr=1.5e-3"')))


@pytest.mark.slow
def test_gpus_launcher_runs_two_children_at_once_and_gives_the_local_table(mini, mm_env):
    """A table of 4 one-epoch smoke runs over fake GPUs 0 and 1 equals the one-process table. (It was ITM's
    Table 3, 99 CPU s; the launcher does not look inside a run, so one-epoch baselines show the same.)"""
    command = ["reproduce", "mini", "--dataset", "twitter15", "--smoke", "--device", "cpu"]
    tables = {}
    for launcher, extra in (("local", []), ("gpus", ["--launcher", "gpus", "--gpus", "0,1"])):
        env = {**mini(FOUR_ROWS), "MMBENCH_RUNS": str(mm_env / launcher)}
        result = mmbench(*command, *extra, env=env)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        tables[launcher] = mmbench("report", "mini", "--smoke", env=env).stdout
    assert "Table 1: mini" in tables["gpus"] and tables["gpus"] == tables["local"]
    assert tables["gpus"].count("not run") == 0 and "RoBERTa lr÷2" in tables["gpus"]

    launches = [json.loads(p.read_text()) for p in sorted((mm_env / "gpus").glob("*/*/*/*/launch.json"))]
    assert len(launches) == 4 and {x["state"] for x in launches} == {"done"}
    assert {x["cuda_visible_devices"] for x in launches} == {"0", "1"}  # each child saw only its own id
    assert all(x["gpu"] == x["cuda_visible_devices"] for x in launches)
    spans = sorted((x["started"], x["finished"]) for x in launches)
    assert any(a[1] > b[0] for a, b in zip(spans, spans[1:])), "no two children ran at the same time"
    logs = list((mm_env / "gpus").glob("*/*/*/*/launch.log"))
    assert len(logs) == 4 and all("CUDA_VISIBLE_DEVICES=" in p.read_text() for p in logs)


@pytest.mark.slow
def test_a_failed_run_is_reported_at_the_end_and_the_rest_finish(mini):
    env = mini(BROKEN_ROW)
    before = status(env)
    assert before["counts"]["missing"] == 2
    command = ["reproduce", "mini", "--dataset", "twitter15", "--smoke", "--device", "cpu", "--launcher", "gpus", "--gpus", "a,b"]
    result = mmbench(*command, env=env)
    assert result.returncode == 2
    assert "FAILED baselines/twitter15-bert seed 0 [model.text_encoder=/nonexistent/encoder]" in result.stdout
    assert "Table 1: mini" in result.stdout  # the finished run's table is still printed
    assert "1 of 2 runs failed" in result.stderr
    after = status(env)
    assert after["counts"]["done"] == 1 and after["counts"]["failed"] == 1
    failed = next(r for r in after["runs"] if r["state"] == "failed")
    assert "nonexistent" in failed["detail"] and "nonexistent" in open(os.path.join(failed["run_dir"], "launch.log")).read()

    again = mmbench(*command, env=env)  # idempotent: the finished run is skipped, the failed one retried
    assert again.returncode == 2 and again.stdout.count("skip (done)") == 1 and again.stdout.count("start ") == 1


@pytest.mark.slow
def test_slurm_launcher_through_submitit_no_wait_then_status(mini, mm_env):
    pytest.importorskip("submitit")
    env = mini()
    config = mm_env / "launcher.yaml"
    config.write_text("launcher:\n  cluster: local\n  time: '0:10:00'\n  partition: gpu\n  sbatch: {account: my-lab}\n")
    result = mmbench("reproduce", "mini", "--dataset", "twitter15", "--smoke", "--device", "cpu", "--launcher", "slurm",
                     "--launcher-config", str(config), "--no-wait", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "submitted 1 jobs" in result.stdout and "Table 1" not in result.stdout
    deadline = time.time() + 600
    while (current := status(env))["counts"]["done"] != 1:
        assert current["counts"]["failed"] == 0, current
        assert time.time() < deadline, current
        time.sleep(2)
    run_dir = current["runs"][0]["run_dir"]
    launch = json.load(open(os.path.join(run_dir, "launch.json")))
    assert launch["launcher"] == "slurm" and launch["job_id"] and launch["options"]["sbatch"] == {"account": "my-lab"}
    assert any(name.endswith("_log.out") for name in os.listdir(os.path.join(run_dir, "slurm")))
    table = mmbench("report", "mini", "--smoke", env=env).stdout
    row = next(line for line in table.splitlines() if line.startswith("| BERT"))
    assert "(1) / 74.15" in row and "not run" not in row


@pytest.mark.slow
def test_slurm_launcher_waits_and_renders_with_the_debug_executor(mini, mm_env):
    pytest.importorskip("submitit")
    env = mini()
    result = mmbench("reproduce", "mini", "--dataset", "twitter15", "--smoke", "--device", "cpu", "--launcher", "slurm", env=env)
    # without a cluster setting the real Slurm executor is asked for: none here, and no silent local fallback
    assert result.returncode == 2 and result.stderr.startswith("error: --launcher slurm: Could not detect")
    config = mm_env / "debug.yaml"
    config.write_text("launcher: {cluster: debug}\n")
    result = mmbench("reproduce", "mini", "--dataset", "twitter15", "--smoke", "--device", "cpu", "--launcher", "slurm",
                     "--launcher-config", str(config), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("| BERT"))
    assert "Table 1: mini" in result.stdout and "(1) / 74.15" in row and "not run" not in row


def test_without_submitit_the_slurm_launcher_says_what_to_install(monkeypatch, mini):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit → ImportError
    for key, value in mini().items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, ["reproduce", "mini", "--dataset", "twitter15", "--smoke", "--launcher", "slurm"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --launcher slurm needs submitit, which is not installed: pip install 'mmbench[slurm]' (or pip install submitit)"]


def test_status_of_an_untouched_plan_and_bad_options(mini, monkeypatch):
    env = mini()
    current = status(env)
    assert current["counts"] == {"done": 0, "running": 0, "queued": 0, "failed": 0, "partial": 0, "missing": 1}
    assert current["runs"][0]["run_dir"].startswith(env["MMBENCH_RUNS"])
    runner = CliRunner()
    for args, message in ((["--launcher", "tpu"], "--launcher 'tpu': expected local, gpus or slurm"),
                          (["--launcher", "gpus", "--gpus", "0,,1"], "--gpus '0,,1': expected distinct ids"),
                          (["--table", "table9"], "unknown table 'table9'")):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        result = runner.invoke(app, ["reproduce", "mini", "--dataset", "twitter15", "--smoke", *args])
        assert result.exit_code == 2 and message in result.output, result.output


def test_a_worker_leaves_a_run_that_another_worker_holds(mini, monkeypatch, tmp_path):
    """Two launchers started on one plan at the same moment: the second worker must not train."""
    from mmbench.launchers import make_jobs
    from mmbench.launchers.worker import HELD_EXIT
    from mmbench.recipes.loader import resolve

    for key, value in mini().items():
        monkeypatch.setenv(key, value)
    job = make_jobs([(resolve("baselines/twitter15-bert", ["train.epochs=1"], smoke=True), 0)], "cpu")[0]
    job.run_dir.mkdir(parents=True)
    with locks.hold(job.run_dir / LOCK_FILE):  # held by this process; the child must see it taken
        child = subprocess.run([sys.executable, "-m", "mmbench.launchers.worker", json.dumps(job.spec())],
                               capture_output=True, text=True, timeout=300)
    assert child.returncode == HELD_EXIT, child.stdout + child.stderr
    assert f"another process is training this run (pid {os.getpid()} on" in child.stdout
    assert sorted(p.name for p in job.run_dir.iterdir()) == [LOCK_FILE]  # nothing trained, nothing written


def test_status_liveness_is_the_lock_itself_not_the_pid_it_names(tmp_path):
    """A held lock is running (with progress from log.jsonl), whatever pid it names; a lock nobody holds
    is not, even when it names a live pid on this host (a pid reused after a reboot)."""
    from mmbench.launchers.status import run_state

    run = tmp_path / "run"
    run.mkdir()
    assert run_state(run) == ("missing", "")
    rows = [{"epoch": 0, "steps": 10, "seconds": 60.0}, {"epoch": 1, "steps": 10, "seconds": 60.0}]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(run / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        state, detail = run_state(run, epochs=5)
        assert state == "running" and f"pid {holder.pid} on" in detail and "epoch 2/5 done, step 20, ETA 3 min" in detail, detail
    finally:
        holder.kill()
        holder.wait()
    (run / LOCK_FILE).write_text(f"pid {os.getpid()} on {socket.gethostname()}\n")  # a live pid, but nobody holds it
    assert run_state(run) == ("missing", "")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    assert run_state(run, epochs=5)[0] == "partial"


HOLD_SCRIPT = "import sys, time\nfrom mmbench.results import locks\nwith locks.hold(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n"


def test_a_run_in_the_gpus_queue_is_queued_and_an_interrupted_one_partial(tmp_path, monkeypatch):
    from mmbench.launchers import QUEUED_NOTE, write_launch
    from mmbench.launchers.status import run_state
    from mmbench.launchers.gpus import _enqueue
    from mmbench.launchers import Job

    runs = [tmp_path / f"run{i}" for i in range(2)]
    jobs = [Job("r", [], True, 0, path) for path in runs]
    queue, holds, held = _enqueue(jobs, log=lambda m: None)
    assert len(queue) == 2 and not held
    for path in runs:
        state, detail = run_state(path)
        assert state == "queued" and detail.startswith(QUEUED_NOTE), (state, detail)
    for stack in holds.values():
        stack.close()
    from mmbench.launchers import read_launch
    from mmbench.launchers.worker import _record_end, requeued

    write_launch(runs[0], state="running")
    _record_end(runs[0], KeyboardInterrupt())  # Ctrl-C, or SIGTERM through the worker's handler
    assert read_launch(runs[0])["state"] == "interrupted"
    requeued(runs[1], "time limit or preemption")  # submitit's checkpoint hook, then its SystemExit
    _record_end(runs[1], SystemExit(144))
    assert read_launch(runs[1])["state"] == "queued"
    _record_end(runs[1], RuntimeError("Job not requeued because: timed-out too many times."))
    assert read_launch(runs[1])["error"] == "RuntimeError: Job not requeued because: timed-out too many times."
    (runs[0] / "checkpoints").mkdir()
    (runs[0] / "checkpoints" / "last.pt").write_bytes(b"x")
    assert run_state(runs[0])[0] == "partial" and "interrupted" in run_state(runs[0])[1]
    assert run_state(runs[1]) == ("failed", "RuntimeError: Job not requeued because: timed-out too many times.")


@pytest.mark.slow
def test_a_slurm_job_past_its_time_limit_is_requeued_and_resumes_to_the_same_metrics(mini, mm_env):
    """submitit's local executor, a 2-minute limit whose signal comes 60 s early (each job gets 60 s to
    start and train, 60 s to exit after the signal: on a loaded 2-core machine a job's start alone took
    35 s): the first job trains epoch 1 of 2, is held (test hook) until the limit's signal, is requeued,
    and the requeued job resumes from last.pt and ends with the metrics of an uninterrupted run."""
    pytest.importorskip("submitit")
    from mmbench.engine.trainer import HOLD_ENV, fit
    from mmbench.recipes.loader import resolve

    env = {**mini(), HOLD_ENV: "1"}
    paper = mm_env / "recipes" / "mini" / "paper.yaml"
    paper.write_text(paper.read_text().replace("train.epochs=1", "train.epochs=2"))
    config = mm_env / "launcher.yaml"
    config.write_text("launcher: {cluster: local, time: 2, signal_delay_s: 60, gpus_per_task: 0}\n")
    result = mmbench("reproduce", "mini", "--dataset", "twitter15", "--smoke", "--device", "cpu", "--launcher", "slurm",
                     "--launcher-config", str(config), env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = next((mm_env / "runs").glob("*/*/*/seed0-*"))
    logs = "".join(p.read_text() for p in (run_dir / "slurm").glob("*_log.out"))
    assert "requeued (time limit or preemption)" in logs and "resumed" in logs and "after epoch 1 of" in logs, logs[-3000:]
    launch = json.loads((run_dir / "launch.json").read_text())
    assert launch["state"] == "done" and launch["options"]["time"] == 2

    for key, value in env.items():
        os.environ[key] = value
    os.environ.pop(HOLD_ENV)
    try:
        reference = fit(resolve("baselines/twitter15-bert", ["train.epochs=2"], smoke=True), 0, root=mm_env / "reference",
                        log=lambda m: None)
    finally:
        for key in env:
            os.environ.pop(key, None)
    requeued = json.loads((run_dir / "metrics.json").read_text())
    assert requeued["metrics"] == reference["metrics"] and requeued["epochs_run"] == 2
    assert requeued["final_train"] == reference["final_train"]  # epoch 2's loss, trained by the requeued job


def test_a_gpus_child_that_cannot_see_its_gpu_refuses_to_train(mini, monkeypatch):
    import torch

    from mmbench.errors import MmbenchError
    from mmbench.launchers import make_jobs, read_launch
    from mmbench.launchers.worker import run_job
    from mmbench.recipes.loader import resolve

    for key, value in mini().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a broken driver
    job = make_jobs([(resolve("baselines/twitter15-bert", ["train.epochs=1"], smoke=True), 0)], None)[0]
    with pytest.raises(MmbenchError, match="CUDA_VISIBLE_DEVICES=3 was given to this run but torch sees no GPU"):
        run_job(job.spec(), launcher="gpus")
    assert read_launch(job.run_dir)["state"] == "failed" and "refusing to train on the CPU" in read_launch(job.run_dir)["error"]
    assert not (job.run_dir / "checkpoints").exists()
    job.device = "cpu"  # --device cpu: meant, not refused (the check is skipped; nothing else changes)
    from mmbench.launchers.worker import check_gpu

    check_gpu(job.device)


def test_slurm_defaults_and_a_failed_jobs_cause(tmp_path):
    from mmbench.launchers import write_launch
    from mmbench.launchers.slurm import DEFAULT_TIME, SlurmOptions, failure_cause

    assert DEFAULT_TIME == "24:00:00" and SlurmOptions().timeout_min() == 1440  # not submitit's 2 (local) or 5 (Slurm) minutes
    assert SlurmOptions(cluster="local").executor_parameters("x")["timeout_min"] == 1440
    assert SlurmOptions(time="1-02:00:30").timeout_min() == 26 * 60 + 1
    wrapped = RuntimeError("Job (task=0) failed during processing with trace:\n----------------------\nTraceback (most recent call last):\n"
                           "  File \"x.py\", line 1\nValueError: bad encoder path\n\n----------------------\nYou can check full logs "
                           "with 'job.stderr(0)' and 'job.stdout(0)'or at paths:\n  - /x/0_log.err\n  - /x/0_log.out")
    assert failure_cause(wrapped, tmp_path) == "ValueError: bad encoder path"
    write_launch(tmp_path, state="failed", error="MmbenchError: /x: checkpoint not found")
    assert failure_cause(wrapped, tmp_path) == "MmbenchError: /x: checkpoint not found"


def test_status_remembers_the_plan_until_a_recipe_or_the_code_changes(mini, monkeypatch):
    import mmbench.reproduce as reproduce

    for key, value in mini().items():
        monkeypatch.setenv(key, value)
    first = reproduce.plan_status("mini", "twitter15", None, True)
    calls = []
    real = reproduce.plan_runs
    monkeypatch.setattr(reproduce, "plan_runs", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert reproduce.plan_status("mini", "twitter15", None, True) == first and calls == []  # from <runs>/.plans/
    paper = Path(os.environ["MMBENCH_RECIPES"]) / "mini" / "paper.yaml"
    paper.write_text(paper.read_text().replace("train.epochs=1", "train.epochs=3"))
    changed = reproduce.plan_status("mini", "twitter15", None, True)
    assert len(calls) == 1 and changed[0]["run_dir"] != first[0]["run_dir"]
    assert reproduce.plan_status("mini", "twitter15", 2, True) != changed and len(calls) == 2  # other arguments, other plan
