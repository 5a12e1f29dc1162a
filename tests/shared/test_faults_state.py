"""State that lies and leftovers (issue 32): concurrent `eval`, `--resume` with nothing to continue,
empty folder variables, and processes killed by real signals (SIGTERM, SIGKILL, SIGINT sent to real
subprocesses) while they launch workers, swap a prepared folder in, or write synthetic raw data.

Cases: eval beside a trainer 2 (first epoch before last.pt; between the pending best and last.pt);
--resume 4 (another --set, a run dir of an older config hash, a finished run without checkpoints/, no
run at all); empty MMBENCH_* variables 2; gpus launcher SIGTERM 1; prepare SIGTERM while filling its
temp folder 1 and SIGKILL between its two renames 1; the synthetic raw writer SIGKILL / SIGINT 2 — 13.
Each signal case starts one Python process (a few seconds, dominated by imports).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mmbench.paths import REPO_ROOT
from mmbench.results import store
from tests.shared.test_faults_cli import RECIPE, TINY, finished, invoke, run  # noqa: F401  (fixtures)
from tests.shared.test_faults_inputs import assert_one_line_error, snapshot


# -- eval beside a trainer ----------------------------------------------------------------------------
@pytest.mark.parametrize("moment", ["first-epoch", "pending-before-last"])
def test_eval_of_a_run_being_trained_refuses_and_leaves_the_trainer_alone(moment, run):
    """The trainer holds the run lock; in its first epoch best-pending-e0.pt exists and neither best.pt
    nor last.pt does (recovery without the lock would delete the pending file and kill the training);
    later, a new pending best is written before last.pt names it."""
    ckpt = run / "checkpoints"
    if moment == "first-epoch":
        os.replace(ckpt / "best.pt", ckpt / "best-pending-e0.pt")
        (ckpt / "last.pt").unlink()
        (run / "metrics.json").unlink()
    else:
        shutil.copy(ckpt / "best.pt", ckpt / "best-pending-e1.pt")
        (ckpt / "best.pt").unlink()
    before = snapshot(run)
    with store.run_lock(run):
        assert_one_line_error(invoke("eval", run), str(run), "being trained")
        assert snapshot(run) == before  # the pending best is still there; nothing written
    after = snapshot(run)
    assert {k: v for k, v in after.items() if k != "train.lock"} == {k: v for k, v in before.items() if k != "train.lock"}


# -- --resume means "continue this run" ---------------------------------------------------------------
@pytest.mark.parametrize("case", ["another-set", "older-config-hash", "finished-without-checkpoints", "no-run"])
def test_resume_with_nothing_to_continue_says_so(case, run, monkeypatch):
    root = run.parents[3]
    monkeypatch.setenv("MMBENCH_RUNS", str(root))
    extra: list[str] = []
    existing = run
    if case == "another-set":
        extra = ["--set", "train.optimizers.main.lr=3e-5"]
    elif case == "older-config-hash":  # the recipe file was edited since this run: its hash differs
        existing = run.with_name("seed0-0123456789")
        os.replace(run, existing)
    elif case == "finished-without-checkpoints":
        shutil.rmtree(run / "checkpoints")
    else:
        shutil.rmtree(run)
    before = snapshot(root)
    result = invoke("train", RECIPE, "--smoke", *TINY, *extra, "--resume")
    if case == "finished-without-checkpoints":
        assert_one_line_error(result, "--resume", str(run / "checkpoints" / "last.pt"), "drop --resume")
    elif case == "no-run":
        assert_one_line_error(result, "--resume: no run to continue", "drop --resume")
    else:
        assert_one_line_error(result, "--resume: no run to continue", f"{existing} is this recipe and seed with config hash")
    assert snapshot(root) == before


# -- empty folder variables ---------------------------------------------------------------------------
@pytest.mark.parametrize("variable,args", [("MMBENCH_RUNS", ["train", RECIPE, "--smoke", *TINY]),
                                           ("MMBENCH_DATA", ["prepare", "twitter15", "--synthetic"])])
def test_an_empty_folder_variable_is_an_error(variable, args, mm_env, tmp_path, monkeypatch):
    monkeypatch.setenv(variable, "")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    assert_one_line_error(invoke(*args), f"{variable}=''")
    assert snapshot(work) == {}


# -- real signals -------------------------------------------------------------------------------------
def _python(script: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO_ROOT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {proc.stdout.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the subprocess")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_sigterm_to_the_gpus_launcher_stops_its_workers(mm_env, monkeypatch):
    from mmbench.data.prepare import load_prepared

    load_prepared("twitter15", synthetic=True)  # prepared once here, not by two workers at once
    proc = _python(f"""
        from mmbench.launchers import gpus, make_jobs
        from mmbench.recipes.loader import resolve
        recipe = resolve({RECIPE!r}, ["train.epochs=500", "data.subset=16"], smoke=True)
        gpus.run(make_jobs([(recipe, 0), (recipe, 1)], "cpu"), ["0", "1"], print)
    """, {"MMBENCH_DATA": os.environ["MMBENCH_DATA"], "MMBENCH_RUNS": os.environ["MMBENCH_RUNS"]})
    launches = lambda: [json.loads(p.read_text()) for p in (mm_env / "runs").rglob("launch.json")]  # noqa: E731
    pids: list[int] = []
    try:
        _wait_for(lambda: len([x for x in launches() if x.get("state") == "running"]) == 2, proc)
        pids = [x["pid"] for x in launches()]
        assert all(_alive(pid) for pid in pids)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in pids if _alive(pid)], "workers outlived their launcher"
        assert {x.get("state") for x in launches()} == {"interrupted"}  # status: partial; the next launch resumes them
    finally:
        for pid in [proc.pid, *pids]:  # only the processes this test started
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _signal_when_ready(proc, ready, sig) -> None:
    """Send `sig` once the child has written `ready`, wait for it to end (killing it if it does not)."""
    try:
        _wait_for(ready.exists, proc)
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


def _prepare_killed(tmp_path: Path, moment: str, sig: int) -> tuple[Path, bytes]:
    """A first prepare of twitter15 into `out` (the old output), then a second one in a subprocess
    that is sent `sig` at `moment`: `filling` (its temp folder half written) or `swap` (the old output
    moved aside, the new one not yet renamed in)."""
    from mmbench.data.catalog import get_dataset
    from mmbench.data.prepare import prepare

    raw, out, ready = tmp_path / "raw", tmp_path / "data" / "prepared" / "twitter15", tmp_path / "ready"
    get_dataset("twitter15").write_synthetic(raw, tmp_path / "images")
    prepare("twitter15", raw, None, out, allow_count_mismatch=True)
    old_manifest = (out / "manifest.json").read_bytes()
    pause = {  # the patched call announces itself and waits for the signal
        "filling": "import datasets as d; real = d.DatasetDict.save_to_disk\n"
                   "def patched(self, *a, **k):\n    real(self, *a, **k); hold()\n"
                   "d.DatasetDict.save_to_disk = patched",
        "swap": "import pathlib; real = pathlib.Path.rename\n"
                f"def patched(self, target):\n    if str(target) == {str(out)!r}: hold()\n    return real(self, target)\n"
                "pathlib.Path.rename = patched",
    }[moment]
    script = (f"import time, pathlib\nfrom pathlib import Path\n"
              f"def hold():\n    Path({str(ready)!r}).write_text('x')\n    time.sleep(120)\n"
              f"{pause}\nfrom mmbench.data.prepare import prepare\n"
              f"prepare('twitter15', Path({str(raw)!r}), None, Path({str(out)!r}), allow_count_mismatch=True)\n")
    proc = _python(script, {"MMBENCH_DATA": str(tmp_path / "data")})
    _signal_when_ready(proc, ready, sig)
    assert list(out.parent.glob(".twitter15.*")), "the killed prepare left no hidden folder: the case tests nothing"
    return out, old_manifest


@pytest.mark.parametrize("moment,sig", [("filling", signal.SIGTERM), ("swap", signal.SIGKILL)])
def test_a_prepare_killed_mid_way_is_finished_by_the_next_one(moment, sig, tmp_path, monkeypatch):
    from mmbench.data.prepare import load_prepared, prepare

    monkeypatch.setenv("MMBENCH_DATA", str(tmp_path / "data"))
    out, old_manifest = _prepare_killed(tmp_path, moment, sig)
    _, manifest = load_prepared("twitter15")  # the old output, whole (after `swap`: restored)
    assert (out / "manifest.json").read_bytes() == old_manifest
    assert not list(out.parent.glob(".twitter15.*")), "leftovers of the killed prepare remain"
    prepare("twitter15", tmp_path / "raw", None, out, allow_count_mismatch=True)
    assert not list(out.parent.glob(".twitter15.*")) and (out / "dataset").is_dir()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_synthetic_raw_folder_cut_short_is_rebuilt(sig, tmp_path, monkeypatch):
    """`train --smoke` prepares its synthetic data on first use (load_prepared); killed while the raw
    files are written, the next run must not read the half-written folder."""
    from mmbench.data.prepare import load_prepared

    data, ready = tmp_path / "data", tmp_path / "ready"
    script = (f"import time\nfrom pathlib import Path\nimport mmbench.data.formats.tombert as t\nreal = t.write_txt\ncalls = []\n"
              f"def patched(*a, **k):\n    calls.append(1)\n    if len(calls) == 2:\n"
              f"        Path({str(ready)!r}).write_text('x')\n        time.sleep(120)\n    return real(*a, **k)\n"
              f"t.write_txt = patched\nfrom mmbench.data.prepare import load_prepared\nload_prepared('twitter15', synthetic=True)\n")
    proc = _python(script, {"MMBENCH_DATA": str(data)})
    _signal_when_ready(proc, ready, sig)
    monkeypatch.setenv("MMBENCH_DATA", str(data))
    dataset, manifest = load_prepared("twitter15", synthetic=True)
    assert manifest["counts"]["test"] > 0 and len(dataset["train"]) == manifest["counts"]["train"]
    assert not list((data / "raw").glob(".twitter15-synthetic.*"))
    reference = tmp_path / "reference"
    from mmbench.data.catalog import get_dataset

    get_dataset("twitter15").write_synthetic(reference, reference / "images")
    written = data / "raw" / "twitter15-synthetic"
    assert {p.name for p in reference.iterdir()} == {p.name for p in written.iterdir() if not p.name.startswith(".")}
    for path in reference.glob("*.t*"):
        assert (written / path.name).read_bytes() == path.read_bytes(), path.name


def test_the_table_has_the_documented_size():
    assert 2 + 4 + 2 + 1 + 2 + 2 == 13
