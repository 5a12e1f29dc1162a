import json
import os
import subprocess
import sys

import pytest
import torch

from mmbench.engine.batching import epoch_batches, eval_shard, rank_slice
from mmbench.engine.optim import schedule_factor
from mmbench.engine.runtime import World, seed_everything
from mmbench.engine.trainer import CRASH_ENV, fit
from mmbench.recipes.loader import resolve
from mmbench.recipes.schema import ScheduleCfg

FAST = ["train.epochs=3", "train.batch_size=32"]


def smoke(*extra):
    return resolve("baselines/twitter15-bert", [*FAST, *extra], smoke=True)


def test_seed_zero_seeds():
    seed_everything(0)
    a = torch.rand(3)
    seed_everything(0)
    assert torch.equal(a, torch.rand(3))
    seed_everything(1)
    assert not torch.equal(a, torch.rand(3))


def test_the_deterministic_flag_reaches_torch_and_an_inductor_imported_later():
    """seed_everything skips importing torch._inductor (1.3 CPU s a process); a later import (torch.compile)
    still sees the run's choice, and the next run's choice replaces it both ways."""
    probe = """
import sys, torch
from mmbench.engine.runtime import seed_everything
seed_everything(0, deterministic=True)
assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
assert "torch._inductor.config" not in sys.modules
import torch._inductor.config as inductor
assert inductor.deterministic is True
seed_everything(0, deterministic=False)
assert not torch.are_deterministic_algorithms_enabled() and inductor.deterministic is False
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_DETERMINISTIC"})
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.slow
def test_training_is_deterministic_for_seed_zero_and_differs_for_seed_one(mm_env):
    first = fit(smoke(), 0, root=mm_env / "a", log=lambda m: None)
    again = fit(smoke(), 0, root=mm_env / "b", log=lambda m: None)
    other = fit(smoke(), 1, root=mm_env / "c", log=lambda m: None)
    assert first["final_train"] == again["final_train"] and first["metrics"] == again["metrics"]
    assert first["final_train"] != other["final_train"]


@pytest.mark.slow
def test_resume_after_a_crash_mid_epoch_matches_an_uninterrupted_run(mm_env, monkeypatch):
    reference = fit(smoke(), 0, root=mm_env / "ref", log=lambda m: None)
    steps_per_epoch = reference["examples"]["train"] // 32 + 1
    monkeypatch.setenv(CRASH_ENV, str(steps_per_epoch + 2))  # dies inside epoch 2
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(smoke(), 0, root=mm_env / "crash", log=lambda m: None)
    monkeypatch.delenv(CRASH_ENV)
    run = next((mm_env / "crash").glob("*/*/*/seed0-*"))
    assert not (run / "metrics.json").exists()
    assert [row["epoch"] for row in map(json.loads, (run / "log.jsonl").read_text().splitlines())] == [1]
    resumed = fit(smoke(), 0, root=mm_env / "crash", resume=True, log=lambda m: None)
    assert resumed["metrics"] == reference["metrics"]
    assert resumed["final_train"] == reference["final_train"]
    assert len((run / "log.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
def test_metrics_json_has_the_documented_schema(mm_env):
    result = fit(smoke(), 0, log=lambda m: None)
    saved = json.loads(open(os.path.join(result["run_dir"], "metrics.json")).read())
    for key in ("schema_version", "config_hash", "overrides", "seed", "seeds", "examples", "metrics",
                "selected_epoch", "timing", "environment", "smoke", "reportable", "recipe", "variant"):
        assert key in saved, key
    assert saved["overrides"] == FAST and saved["smoke"] and not saved["reportable"]
    assert set(saved["metrics"]) == {"dev", "test"} and "accuracy" in saved["metrics"]["test"]
    for key in ("git_commit", "git_dirty", "torch", "transformers", "device", "precision"):
        assert key in saved["environment"], key
    for name in ("recipe.yaml", "log.jsonl", "predictions-test.jsonl", "checkpoints/best.pt"):
        assert os.path.exists(os.path.join(result["run_dir"], name)), name
    assert not os.path.exists(os.path.join(result["run_dir"], "checkpoints/last.pt"))  # train.keep_checkpoints: best_weights
    assert saved["checkpoints"]["keep"] == "best_weights" and saved["environment"]["deterministic"] is True
    predictions = open(os.path.join(result["run_dir"], "predictions-test.jsonl")).read().splitlines()
    assert len(predictions) == saved["examples"]["test"]


MINI_PAPER = """
paper: mini
title: Mini paper (two text-only rows)
tolerances: {accuracy: 1.0}
tables:
  - id: t1
    title: "Table 1: mini"
    columns: [{dataset: twitter15, metric: accuracy, header: "T15 Acc"}]
    rows:
      - {label: BERT, recipe: "baselines/{dataset}-bert", overrides: ["train.epochs=1"], paper: [74.15]}
      - {label: RoBERTa, recipe: "baselines/{dataset}-roberta", overrides: ["train.epochs=1"], paper: [76.28]}
"""


@pytest.mark.slow
def test_reproduce_skip_existing_runs_nothing_the_second_time(mm_env):
    recipes = mm_env / "recipes"  # a user folder beside the built-in recipes (baselines come from those)
    (recipes / "mini").mkdir(parents=True)
    (recipes / "mini" / "paper.yaml").write_text(MINI_PAPER)
    cmd = [sys.executable, "-m", "mmbench.cli", "reproduce", "mini", "--dataset", "twitter15", "--smoke", "--skip-existing"]
    env = {**os.environ, "MMBENCH_RECIPES": str(recipes)}
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    metrics = sorted(mm_env.glob("runs/*/*/*/*/metrics.json"))
    stamps = [p.stat().st_mtime_ns for p in metrics]
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("skip (exists)") == len(metrics) == 2
    assert [p.stat().st_mtime_ns for p in metrics] == stamps
    assert "Table 1: mini" in second.stdout and "SMOKE" in second.stdout


def test_batch_plans_are_seeded_by_epoch_and_cover_every_example():
    a = epoch_batches(10, 4, seed=0, epoch=0, shuffle=True)
    assert a == epoch_batches(10, 4, seed=0, epoch=0, shuffle=True)
    assert a != epoch_batches(10, 4, seed=0, epoch=1, shuffle=True)
    assert sorted(i for b in a for i in b) == list(range(10)) and [len(b) for b in a] == [4, 4, 2]
    batch = [5, 1, 7, 3]
    world = [World(rank=r, size=2) for r in range(2)]
    assert rank_slice(batch, world[0]) + rank_slice(batch, world[1]) == batch
    assert sorted(eval_shard(7, world[0]) + eval_shard(7, world[1])) == list(range(7))


def _lr_factors(cfg: ScheduleCfg, total: int, per_epoch: int) -> list[float]:
    """The lr factor the engine's scheduler gives before each of `total` optimiser steps."""
    from mmbench.engine.optim import build_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler, factors = build_scheduler(opt, cfg, total, per_epoch), []
    for _ in range(total):
        factors.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return factors


def test_step_schedule_is_torchs_steplr_per_epoch_and_linear_warmup_differs_from_hf_only_in_warmup():
    step = _lr_factors(ScheduleCfg(name="step", step_size=2, gamma=0.5), 50, 10)
    assert step[::10] == pytest.approx([1, 1, 0.5, 0.5, 0.25]) and step[19:21] == pytest.approx([1, 0.5])
    from transformers import get_linear_schedule_with_warmup

    ours = _lr_factors(ScheduleCfg(name="linear_warmup", warmup_ratio=0.1), 100, 10)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf, theirs = get_linear_schedule_with_warmup(opt, 10, 100), []
    for _ in range(100):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        hf.step()
    assert ours[:10] == pytest.approx([(s + 1) / 10 for s in range(10)]) and theirs[:10] == pytest.approx([s / 10 for s in range(10)])
    assert ours[10:] == pytest.approx(theirs[10:])  # identical decay after the warm-up


def test_hand_written_schedules():
    cosine = ScheduleCfg(name="cosine_restarts", t0=2)
    assert schedule_factor(cosine, 0, 100, 10) == 1.0
    assert schedule_factor(cosine, 10, 100, 10) == pytest.approx(0.5)
    assert schedule_factor(cosine, 20, 100, 10) == 1.0  # restart
    warm = ScheduleCfg(name="linear_warmup", warmup_ratio=0.1)
    assert [schedule_factor(warm, s, 100, 10) for s in (0, 9, 55)] == pytest.approx([0.1, 1.0, 0.5])
    bert = ScheduleCfg(name="bert_warmup_linear", warmup_ratio=0.1, t_total=50)  # x = step/50
    assert [schedule_factor(bert, s, 999, 10) for s in (0, 2, 5, 25, 50, 55)] == pytest.approx([0, 0.4, 0.9, 0.5, 0, -0.1])


def test_cosine_restarts_equal_torchs_scheduler_stepped_per_epoch():
    cfg = ScheduleCfg(name="cosine_restarts", t0=3, t_mult=2, eta_min=0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    torch_sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=3, T_mult=2, eta_min=0.2)
    for epoch in range(20):
        assert 2.0 * schedule_factor(cfg, epoch * 7 + 3, 999, 7) == pytest.approx(opt.param_groups[0]["lr"]), epoch
        opt.step()
        torch_sched.step()
    assert _lr_factors(cfg, 21, 7)[::7] == pytest.approx([schedule_factor(cfg, e * 7, 21, 7) for e in range(3)])


def _bertadam_reference(param, grads, lr, lr_factors, b1=0.9, b2=0.999, eps=1e-6, wd=0.01):
    """BertAdam written from its update rule (no bias correction), one lr factor per step."""
    p, m, v = param.clone(), torch.zeros_like(param), torch.zeros_like(param)
    for g, factor in zip(grads, lr_factors):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * factor * (m / (v.sqrt() + eps) + wd * p)
    return p


def test_bertadam_matches_its_update_rule_and_schedules_twice():
    from mmbench.engine.optim import build_optimizer, build_scheduler
    from mmbench.recipes.schema import OptimizerCfg

    torch.manual_seed(0)
    start, grads = torch.randn(5, dtype=torch.float64), [torch.randn(5, dtype=torch.float64) for _ in range(7)]
    w = lambda x: x / 0.3 if x < 0.3 else 1 - x  # noqa: E731  warmup_linear, warm-up 0.3, t_total 5
    cases = {  # (engine schedule, BertAdam's own schedule) → the lr factor of step k
        "own": (dict(), dict(warmup=0.3, t_total=5), [w(k / 5) for k in range(7)]),
        "twice": (dict(schedule=ScheduleCfg(name="bert_warmup_linear", warmup_ratio=0.3, t_total=5)),
                  dict(warmup=0.3, t_total=5), [w(k / 5) ** 2 for k in range(7)]),
        "none": (dict(), dict(), [1.0] * 7),
    }
    for name, (sched, own, factors) in cases.items():
        param = torch.nn.Parameter(start.clone())
        cfg = OptimizerCfg(name="bertadam", lr=0.1, eps=1e-6, weight_decay=0.01, no_decay_bias_norm=False, **sched, **own)
        opt = build_optimizer([("w", param)], cfg)
        scheduler = build_scheduler(opt, cfg.schedule, 7, 7)
        for g in grads:
            param.grad = g.clone()
            opt.step()
            scheduler.step()
        torch.testing.assert_close(param.detach(), _bertadam_reference(start, grads, 0.1, factors), rtol=0, atol=1e-12, msg=name)
    # AdamW's bias correction makes its first step ~3× smaller than BertAdam's (0.1/√0.001 ≈ 3.16)
    adamw, bert = (torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)) for _ in range(2))
    for p, name in ((adamw, "adamw"), (bert, "bertadam")):
        p.grad = torch.ones(1, dtype=torch.float64)
        build_optimizer([("w", p)], OptimizerCfg(name=name, lr=1.0, eps=1e-6)).step()
    assert bert.item() / adamw.item() == pytest.approx(0.1 / 0.001 ** 0.5, rel=1e-4)
    with pytest.raises(ValueError, match="BertAdam's own schedule"):
        OptimizerCfg(name="adamw", lr=1.0, warmup=0.1, t_total=10)


@pytest.mark.slow
def test_two_process_training_and_evaluation_match_one_process(mm_env):
    """torchrun with 2 gloo processes: each global batch is split across ranks and gradients are
    averaged, so (without dropout, with equal halves) training ends where 1 process ends; and `eval` of
    the one-process run over 2 processes (each scores half the examples, the predictions are gathered)
    prints the metrics the run recorded. (One test: two torchrun start-ups instead of three.)"""
    args = ["-m", "mmbench.cli", "train", "baselines/twitter15-bert", "--smoke", "--device", "cpu",
            "--set", "model.dropout=0", "--set", "model.encoder_dropout=0", "--set", "train.epochs=2", "--set", "train.batch_size=32", "--set", "train.drop_last=true"]
    one = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "MMBENCH_RUNS": str(mm_env / "one")})
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534", *args],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "MMBENCH_RUNS": str(mm_env / "two")})
    assert two.returncode == 0, two.stderr[-2000:]
    (a,), (b,) = (list((mm_env / d).glob("*/*/*/*/metrics.json")) for d in ("one", "two"))
    first, second = json.loads(a.read_text()), json.loads(b.read_text())
    assert second["environment"]["world_size"] == 2 and first["examples"] == second["examples"]
    assert second["metrics"]["test"]["accuracy"] == pytest.approx(first["metrics"]["test"]["accuracy"], abs=1e-9)
    assert second["final_train"]["loss"] == pytest.approx(first["final_train"]["loss"], rel=1e-4)

    evaluated = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                                "-m", "mmbench.cli", "eval", str(a.parent), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    line = next(l for l in evaluated.stdout.splitlines() if l.startswith("test"))
    for metric in ("accuracy", "macro_f1"):
        assert f"{metric}={first['metrics']['test'][metric]:.4f}" in line, line
