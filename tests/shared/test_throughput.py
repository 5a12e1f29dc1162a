"""Background loading (engine.prefetch) and per-run throughput (engine.throughput): batches come in plan
order with the same content, errors and grad mode cross the thread, every run logs samples/s and
data wait, and a resumed run equals an uninterrupted one with background loading on."""

from __future__ import annotations

import json
import random
import time

import pytest
import torch

from mmbench.engine.prefetch import background, parallel, train_loader
from mmbench.engine.throughput import EpochMeter, batch_samples, run_summary
from mmbench.engine.trainer import CRASH_ENV, build_session, fit
from mmbench.recipes.loader import resolve


def test_background_keeps_order_and_applies_the_transform_on_the_worker():
    seen = []

    def source():
        for i in range(20):
            seen.append(i)
            yield {"index": [i], "x": torch.full((2,), float(i))}

    out = list(background(source(), prefetch=3, transform=lambda b: {**b, "x": b["x"] * 2}))
    assert [b["index"][0] for b in out] == list(range(20))
    assert all(torch.equal(b["x"], torch.full((2,), 2.0 * i)) for i, b in enumerate(out))


def test_parallel_workers_return_batches_in_job_order():
    def job(i):
        time.sleep(random.random() * 0.01)  # finish out of order
        return i

    assert list(parallel([lambda i=i: job(i) for i in range(30)], workers=4, prefetch=2)) == list(range(30))


def test_a_worker_error_reaches_the_consumer_and_grad_mode_crosses_the_thread():
    def broken():
        yield 1
        raise ValueError("bad image 7.jpg")

    with pytest.raises(ValueError, match="bad image 7.jpg"):
        list(background(broken(), prefetch=2))
    with torch.no_grad():
        modes = list(background((torch.is_grad_enabled() for _ in range(3)), prefetch=2))
    assert modes == [False, False, False]
    assert list(background((torch.is_grad_enabled() for _ in range(2)), prefetch=2)) == [True, True]


def test_meter_counts_samples_and_data_wait():
    def slow():
        for i in range(4):
            time.sleep(0.02)  # the loader is the bottleneck: data wait dominates
            yield {"index": [i, i + 1, i + 2]}

    meter = EpochMeter(4, progress=False)
    for _ in meter.batches(slow()):
        pass
    summary = meter.summary()
    assert summary["samples"] == 12 and summary["data_wait_fraction"] > 0.8
    assert batch_samples({"aux": {"index": [0]}, "main": {"index": [1, 2]}}) == 2
    total = run_summary([{"throughput": summary}, {"throughput": summary}])
    assert total["train_samples"] == 24 and total["samples_per_s"] == pytest.approx(summary["samples_per_s"], rel=1e-3)


def test_parallel_collate_equals_the_methods_own_batches(mm_env):
    """workers > 1 re-plans the default `train_batches` in the engine: it must give the same batches."""
    torch.set_num_threads(1)
    resolved = resolve("baselines/twitter15-bert", ["data.subset=40", "train.batch_size=8", "train.loader.workers=3"], smoke=True)
    session = build_session(resolved, 0)
    method = session.method
    mine = list(train_loader(method, 1, resolved.recipe.train.loader))
    reference = list(method.train_batches(1))
    assert len(mine) == len(reference) == 5
    for a, b in zip(mine, reference):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key]


def _comparable(result: dict, run_dir) -> tuple:
    log = [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "throughput")}
           for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return result["metrics"], result["final_train"], log


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["baselines/twitter15-bert", "dtca/twitter15"])
def test_resume_with_background_loading_equals_an_uninterrupted_run(recipe, mm_env, monkeypatch):
    torch.set_num_threads(1)
    tiny = ["train.epochs=2", "data.subset=24", "train.batch_size=4"]
    on = [*tiny, "train.loader.prefetch=3", "train.loader.workers=2"]
    reference = fit(resolve(recipe, on, smoke=True), 0, root=mm_env / "ref", log=lambda m: None)
    ref_dir = next((mm_env / "ref").glob("*/*/*/seed0-*"))
    row = json.loads((ref_dir / "log.jsonl").read_text().splitlines()[0])["throughput"]
    assert row["samples"] > 0 and row["samples_per_s"] > 0 and 0 <= row["data_wait_fraction"] <= 1
    assert reference["timing"]["samples_per_s"] > 0 and "data_wait_fraction" in reference["timing"]

    # the same numbers as loading in the loop (prefetch 0): background loading changes speed only
    plain = fit(resolve(recipe, [*tiny, "train.loader.prefetch=0"], smoke=True), 0, root=mm_env / "plain", log=lambda m: None)
    assert _comparable(plain, next((mm_env / "plain").glob("*/*/*/seed0-*"))) == _comparable(reference, ref_dir)

    steps = json.loads((ref_dir / "log.jsonl").read_text().splitlines()[0])["steps"]
    monkeypatch.setenv(CRASH_ENV, str(steps + 1))  # dies inside epoch 2, with batches prefetched
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(resolve(recipe, on, smoke=True), 0, root=mm_env / "crash", log=lambda m: None)
    monkeypatch.delenv(CRASH_ENV)
    resumed = fit(resolve(recipe, on, smoke=True), 0, root=mm_env / "crash", resume=True, log=lambda m: None)
    crash_dir = next((mm_env / "crash").glob("*/*/*/seed0-*"))
    assert _comparable(resumed, crash_dir) == _comparable(reference, ref_dir)


def test_loader_settings_stay_out_of_the_config_hash_and_gpu_switches_only_when_set():
    base = resolve("itm/twitter15")
    assert resolve("itm/twitter15", ["train.loader.prefetch=0", "train.loader.workers=4"]).config_hash == base.config_hash
    assert "loader" not in base.as_dict()["train"] and "compile" not in base.as_dict()["train"]
    assert resolve("itm/twitter15", ["train.compile=true"]).config_hash != base.config_hash
    assert resolve("itm/twitter15", ["train.fused_optimizer=false"]).config_hash != base.config_hash


def test_gpu_switches_leave_a_cpu_run_alone():
    from mmbench.engine.optim import build_optimizer
    from mmbench.engine.throughput import apply_gpu_switches, fused_optimizer

    train = resolve("itm/twitter15").recipe.train
    model = torch.nn.Linear(3, 2)
    assert apply_gpu_switches(train, torch.device("cpu"), model) is model
    assert fused_optimizer(train, torch.device("cpu")) is False and fused_optimizer(train, torch.device("cuda")) is True
    optimizer = build_optimizer(model.named_parameters(), train.optimizers["main"], fused=False)
    assert not optimizer.param_groups[0].get("fused")
