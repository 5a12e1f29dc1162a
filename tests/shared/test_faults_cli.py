"""Bad options, bad checkpoints, misuse and faults on every command (issue 11), in-process.

Each case asserts exit code 2, stderr exactly one line naming the option, key or file at fault, and
the runs / output folder byte-for-byte as before. Cases (`test_the_table_has_the_documented_size`):
--set values 22 × {train, show} = 44; --device 8 × {train, eval, reproduce} = 24; --subset 4;
eval --split 4; eval --checkpoint 8; bad checkpoint files 10 (crafted __reduce__ payloads included,
for eval and --resume); eval RUN_DIR 3; corrupt metrics.json in report 6; report options 3;
reproduce options 4; prepare --out/--raw/--images 10; run integrity 9 — 129 in all.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mmbench.cli import app
from mmbench.results import store
from tests.shared.test_faults_inputs import assert_one_line_error, snapshot

runner = CliRunner()
RECIPE = "baselines/twitter15-bert"
TINY = ["--set", "train.epochs=1", "--set", "data.subset=16"]
MARKER = Path("/tmp/mmbench-issue11-checkpoint-payload-ran")

BAD_SETS = [  # (override, the key the message must name)
    ("train.seeds=[]", "train.seeds"), ("train.seeds=[1, 1]", "train.seeds"), ("train.seeds=[true]", "train.seeds"),
    ("data.subset=0", "data.subset"), ("data.subset=-3", "data.subset"), ("data.subset=abc", "data.subset"),
    ("train.epochs=true", "train.epochs"), ("train.epochs=0", "train.epochs"), ("train.epochs=1.5", "train.epochs"),
    ("train.epochs=.nan", "train.epochs"), ("train.optimizers.main.lr=nan", "train.optimizers.main.lr"),
    ("train.optimizers.main.lr=-1e-5", "train.optimizers.main.lr"), ("train.optimizers.main.lr=.inf", "train.optimizers.main.lr"),
    ("train.optimizers.main.lr=0", "train.optimizers.main.lr"), ("train.optimizers.main.lr=fast", "train.optimizers.main.lr"),
    ("train.optimizers.main.weight_decay=-0.1", "train.optimizers.main.weight_decay"), ("train.batch_size=0", "train.batch_size"),
    ("train.patience=0", "train.patience"), ("train.grad_clip=-1", "train.grad_clip"), ("train.epochs", "--set"),
    ("train..epochs=2", "--set"), ("train.epochz=2", "train.epochz"),
]
BAD_DEVICES = ["tpu", "cuda:1", "cuda:x", "gpu", "cpu:0", "CUDA", "cuda:-1", "metal"]


def _finished_run(root: Path) -> Path:
    from mmbench.engine.trainer import fit
    from mmbench.recipes.loader import resolve

    # full state kept: the cases below break last.pt of a finished run
    fit(resolve(RECIPE, ["train.epochs=1", "data.subset=16", "train.keep_checkpoints=full"], smoke=True), 0, root=root, log=lambda m: None)
    return next(root.glob("*/*/*/seed0-*"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, shared_data_root) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MMBENCH_DATA", str(shared_data_root))
        torch.set_num_threads(1)
        return _finished_run(tmp_path_factory.mktemp("finished"))


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A private copy of the finished run (cases break its files)."""
    copy = tmp_path / "runs" / finished.relative_to(finished.parents[3])
    shutil.copytree(finished, copy)
    return copy


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


# -- options ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "show"])
@pytest.mark.parametrize("override,key", BAD_SETS, ids=[o for o, _ in BAD_SETS])
def test_bad_set_values_are_one_line(command, override, key, mm_env):
    result = invoke(command, RECIPE, "--smoke", "--set", override)
    assert_one_line_error(result, key)
    assert snapshot(mm_env / "runs") == {}


@pytest.mark.parametrize("command", ["train", "eval", "reproduce"])
@pytest.mark.parametrize("device", BAD_DEVICES)
def test_only_devices_that_exist(command, device, mm_env, run):
    if torch.cuda.is_available() and device == "cuda:1" and torch.cuda.device_count() > 1:
        pytest.skip("this machine has cuda:1")
    before = snapshot(mm_env / "runs")
    args = {"train": ["train", RECIPE, "--smoke", *TINY], "eval": ["eval", run],
            "reproduce": ["reproduce", "itm", "--dataset", "twitter15", "--smoke"]}[command]
    assert_one_line_error(invoke(*args, "--device", device), f"--device {device}")
    assert snapshot(mm_env / "runs") == before


@pytest.mark.parametrize("subset", ["-1", "abc", "0", "1.5"])
def test_bad_subset(subset, mm_env):
    assert_one_line_error(invoke("train", RECIPE, "--subset", subset), "subset")
    assert snapshot(mm_env / "runs") == {}


@pytest.mark.parametrize("split", ["validation", "train", "", "TEST"])
def test_eval_split_is_dev_or_test(split, run):
    before = snapshot(run)
    assert_one_line_error(invoke("eval", run, "--split", split), "--split")
    assert snapshot(run) == before


@pytest.mark.parametrize("checkpoint,part", [
    ("../../x.pt", "--checkpoint ../../x.pt"), ("/etc/passwd", "--checkpoint /etc/passwd"),
    ("checkpoints/../../elsewhere.pt", "--checkpoint"), ("nope", "checkpoint not found"),
    ("checkpoints", "not a checkpoint file"), ("recipe.yaml", "refusing to load"),
    ("best.pt", "checkpoint not found"), ("log.jsonl", "refusing to load")])
def test_eval_checkpoint_is_best_last_or_a_file_in_the_run(checkpoint, part, run):
    before = snapshot(run)
    assert_one_line_error(invoke("eval", run, "--checkpoint", checkpoint), part)
    assert snapshot(run) == before


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def _crafted(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["loop"]["payload"] = Payload()
    torch.save(state, path)


BAD_CHECKPOINTS = {  # name → (file, how it is broken, the command that reads it, message part)
    "payload-best-eval": ("best.pt", _crafted, "eval", "refusing to load"),
    "payload-last-eval": ("last.pt", _crafted, "eval-last", "refusing to load"),
    "payload-last-resume": ("last.pt", _crafted, "resume", "refusing to load"),
    "truncated-best": ("best.pt", lambda p: p.write_bytes(p.read_bytes()[:1000]), "eval", "unreadable checkpoint"),
    "empty-best": ("best.pt", lambda p: p.write_bytes(b""), "eval", "unreadable checkpoint"),
    "garbage-last-resume": ("last.pt", lambda p: p.write_bytes(os.urandom(64)), "resume", "checkpoint"),
    "folder-best": ("best.pt", lambda p: (p.unlink(), p.mkdir()), "eval", "not a checkpoint file"),
    "no-model-best": ("best.pt", lambda p: torch.save({"a": 1}, p), "eval", "not an mmbench checkpoint"),
    "wrong-shapes-best": ("best.pt", lambda p: torch.save({"model": {"x": torch.zeros(2)}, "loop": {}}, p), "eval", "does not fit"),
    "truncated-last-resume": ("last.pt", lambda p: p.write_bytes(p.read_bytes()[:5000]), "resume", "unreadable checkpoint"),
}


@pytest.mark.parametrize("name", list(BAD_CHECKPOINTS))
def test_bad_checkpoints_are_refused_with_one_line(name, run, mm_env, monkeypatch):
    file, breaks, command, part = BAD_CHECKPOINTS[name]
    MARKER.unlink(missing_ok=True)
    target = run / "checkpoints" / file
    breaks(target)
    monkeypatch.setenv("MMBENCH_RUNS", str(run.parents[3]))
    before = snapshot(run)
    if command == "resume":
        result = invoke("train", RECIPE, "--smoke", *TINY, "--resume")
    else:
        result = invoke("eval", run, *(["--checkpoint", "last"] if command == "eval-last" else []))
    assert_one_line_error(result, file, part)
    assert not MARKER.exists(), "the checkpoint's payload ran"
    if command != "resume":  # a resume removes the metrics.json it is about to replace
        assert snapshot(run) == before


@pytest.mark.parametrize("make", ["missing", "a-file", "no-recipe"])
def test_eval_needs_a_run_dir(make, tmp_path):
    target = tmp_path / "run"
    if make == "a-file":
        target.write_text("x")
    elif make == "no-recipe":
        target.mkdir()
    assert_one_line_error(invoke("eval", target), str(target))


# -- report ----------------------------------------------------------------------------------------------
CORRUPT_METRICS = {"truncated": b'{"metrics": {"test": ', "not-json": b"hello", "a-list": b"[1, 2]", "no-metrics": b'{"seed": 0}',
                   "latin1": b'{"metrics": {}, "note": "\xe9"}', "empty": b""}


@pytest.mark.parametrize("name", list(CORRUPT_METRICS))
def test_a_corrupt_metrics_json_is_skipped_with_one_warning(name, run, monkeypatch):
    monkeypatch.setenv("MMBENCH_RUNS", str(run.parents[3]))
    (run / "metrics.json").write_bytes(CORRUPT_METRICS[name])
    before = snapshot(run.parents[3])
    result = invoke("report", "itm", "--smoke")
    assert result.exit_code == 0, result.output
    warnings = [w for w in result.stderr.strip().splitlines() if not w.startswith("warning: no finished smoke runs")]
    assert len(warnings) == 1 and "metrics.json" in warnings[0] and warnings[0].startswith("warning: skipped"), result.stderr
    assert "Table" in result.stdout
    assert snapshot(run.parents[3]) == before


def test_report_options(mm_env, tmp_path):
    assert_one_line_error(invoke("report", "itm", "--format", "pdf"), "--format")
    assert_one_line_error(invoke("report"), "name a paper")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert_one_line_error(invoke("report", "itm", "--smoke", "--out", blocker), str(blocker))
    assert blocker.read_text() == "x"


# -- reproduce -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,part", [(["--seeds", "0"], "--seeds 0"), (["--seeds", "-2"], "--seeds -2"),
                                       (["--launcher", "rocket"], "--launcher"), (["--table", "table99"], "table99")])
def test_reproduce_options(args, part, mm_env):
    assert_one_line_error(invoke("reproduce", "itm", "--dataset", "twitter15", "--smoke", *args), part)
    assert snapshot(mm_env / "runs") == {}


# -- prepare never destroys a user's files --------------------------------------------------------------
def _user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work")
    return path


@pytest.mark.parametrize("case", ["out-is-a-file", "out-is-a-user-folder", "out-is-raw", "out-inside-raw", "raw-inside-out",
                                  "out-is-images", "images-missing", "images-is-a-file", "raw-missing", "foreign-manifest"])
def test_prepare_writes_only_into_its_own_folders(case, tmp_path, mm_env):
    from mmbench.data.catalog import get_dataset

    raw, images = tmp_path / "raw", tmp_path / "images"
    get_dataset("twitter15").write_synthetic(raw, images)
    out = tmp_path / "out"
    extra: list = []
    if case == "out-is-a-file":
        out.write_text("mine")
    elif case == "out-is-a-user-folder":
        _user_folder(out)
    elif case == "out-is-raw":
        out = raw
    elif case == "out-inside-raw":
        out = raw / "prepared"
    elif case == "raw-inside-out":
        out = tmp_path
    elif case == "out-is-images":
        out, extra = images, ["--images", images]
    elif case == "images-missing":
        extra = ["--images", tmp_path / "imagez"]
    elif case == "images-is-a-file":
        (tmp_path / "img.txt").write_text("x")
        extra = ["--images", tmp_path / "img.txt"]
    elif case == "raw-missing":
        raw = tmp_path / "rawz"
    elif case == "foreign-manifest":
        _user_folder(out)
        (out / "manifest.json").write_text('{"name": "my own manifest"}')
    before = snapshot(tmp_path)
    result = invoke("prepare", "twitter15", "--raw", raw, "--out", out, "--allow-count-mismatch", *extra)
    assert_one_line_error(result, {"images-missing": "imagez", "images-is-a-file": "img.txt", "raw-missing": "rawz"}.get(case, str(out)))
    assert snapshot(tmp_path) == before


def test_prepare_replaces_its_own_output_and_uses_an_empty_folder(tmp_path, mm_env):
    from mmbench.data.catalog import get_dataset

    raw, out = tmp_path / "raw", tmp_path / "out"
    get_dataset("twitter15").write_synthetic(raw, tmp_path / "images")
    out.mkdir()
    assert invoke("prepare", "twitter15", "--raw", raw, "--out", out, "--allow-count-mismatch").exit_code == 0
    assert invoke("prepare", "twitter15", "--raw", raw, "--out", out, "--allow-count-mismatch").exit_code == 0
    assert (out / "manifest.json").exists() and not list(tmp_path.glob(".out.*"))


# -- run integrity ---------------------------------------------------------------------------------------
def test_a_second_train_into_a_locked_run_dir_names_the_holder(run, monkeypatch):
    monkeypatch.setenv("MMBENCH_RUNS", str(run.parents[3]))
    before = snapshot(run)
    with store.run_lock(run):
        line = assert_one_line_error(invoke("train", RECIPE, "--smoke", *TINY), "in use by pid", f"pid {os.getpid()} on ")
    assert str(run) in line and snapshot(run) == before


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EROFS"])
def test_a_full_disk_or_read_only_runs_dir_is_one_line(errno_name, mm_env, monkeypatch):
    import errno

    def hook(path, phase):
        raise OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)), str(path))

    monkeypatch.setattr(store, "FAULT_HOOK", hook)
    assert_one_line_error(invoke("train", RECIPE, "--smoke", *TINY), "recipe.yaml", os.strerror(getattr(errno, errno_name)))


def test_starting_without_resume_over_a_run_starts_clean_and_says_so(run, monkeypatch):
    monkeypatch.setenv("MMBENCH_RUNS", str(run.parents[3]))
    stale = json.loads((run / "metrics.json").read_text())
    stale["metrics"]["test"]["accuracy"] = 99.9
    (run / "metrics.json").write_text(json.dumps(stale))
    (run / "predictions-test-old.jsonl").write_text("{}\n")
    result = invoke("train", RECIPE, "--smoke", *TINY)
    assert result.exit_code == 0, result.output
    assert "starting clean" in result.stdout and "finished" in result.stdout
    assert json.loads((run / "metrics.json").read_text())["metrics"]["test"]["accuracy"] != 99.9
    assert not (run / "predictions-test-old.jsonl").exists()


def test_a_killed_run_never_keeps_a_stale_metrics_json(run, monkeypatch):
    """Problem 5: a run killed after it started leaves no metrics.json, so report/--skip-existing skip it."""
    monkeypatch.setenv("MMBENCH_RUNS", str(run.parents[3]))
    monkeypatch.setattr(store, "FAULT_HOOK", _kill_on("predictions-test.jsonl"))
    from mmbench.engine.trainer import fit
    from mmbench.recipes.loader import resolve

    assert (run / "metrics.json").exists()
    with pytest.raises(store.SimulatedKill):
        fit(resolve(RECIPE, ["train.epochs=1", "data.subset=16"], smoke=True), 0, resume=True, log=lambda m: None)
    assert not (run / "metrics.json").exists()
    monkeypatch.setattr(store, "FAULT_HOOK", None)
    assert "to do" in invoke("reproduce", "itm", "--dataset", "twitter15", "--smoke", "--dry-run").stdout


def _kill_on(name: str):
    def hook(path, phase):
        if Path(path).name == name and phase == "tmp-written":
            raise store.SimulatedKill(name)
    return hook


def test_resume_removes_leftover_temp_files_and_files_are_not_private(run, monkeypatch):
    monkeypatch.setenv("MMBENCH_RUNS", str(run.parents[3]))
    leftovers = [run / ".predictions-test.jsonl.abc.tmp", run / "checkpoints" / ".last.pt.xyz.tmp"]
    for path in leftovers:
        path.write_text("half")
    result = invoke("train", RECIPE, "--smoke", *TINY, "--resume")
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in leftovers) and "removed leftover" in result.stdout
    for name in ("metrics.json", "log.jsonl", "checkpoints/best.pt", "recipe.yaml"):
        assert stat.S_IMODE((run / name).stat().st_mode) & 0o044 == 0o044, name  # group/other can read


def test_report_smoke_out_prints_the_file_it_writes(run, tmp_path, monkeypatch):
    monkeypatch.setenv("MMBENCH_RUNS", str(run.parents[3]))
    result = invoke("report", "itm", "--smoke", "--out", tmp_path / "tables")
    written = [line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith("wrote ")]
    assert written and all(Path(p).is_file() for p in written), result.stdout


def test_a_new_best_is_on_disk_before_last_pt_names_it(run, monkeypatch):
    """Problem 1: killed just after last.pt records a new best, the resumed run reports that best's weights."""
    from mmbench.engine.checkpoint import recover

    monkeypatch.setenv("MMBENCH_RUNS", str(run.parents[3]))
    order: list[str] = []
    monkeypatch.setattr(store, "FAULT_HOOK", lambda path, phase: order.append(f"{Path(path).name}:{phase}"))
    assert invoke("train", RECIPE, "--smoke", *TINY, "--set", "train.keep_checkpoints=full").exit_code == 0  # keep last.pt
    assert order.index("best-pending-e0.pt:renamed") < order.index("last.pt:tmp-written")
    # last.pt committed, best not yet renamed: recovery promotes the pending file last.pt names
    best = run / "checkpoints" / "best.pt"
    os.replace(best, run / "checkpoints" / "best-pending-e0.pt")
    recover(run / "checkpoints")
    assert torch.load(best, weights_only=True)["loop"]["best_epoch"] == 0


def test_the_table_has_the_documented_size():
    counts = [len(BAD_SETS) * 2, len(BAD_DEVICES) * 3, 4, 4, 8, len(BAD_CHECKPOINTS), 3, len(CORRUPT_METRICS), 3, 4, 10, 9]
    assert counts == [44, 24, 4, 4, 8, 10, 3, 6, 3, 4, 10, 9] and sum(counts) == 129
