"""DCPA end to end on synthetic SCAN-layout data: stage-1 smoke training learns, stage switching freezes
Intra-PAM, the frozen-BERT word cache is built once, COCO reports 5K and 1K-5-fold metrics, recipes and
paper tables resolve."""

from __future__ import annotations

import json

import pytest
import torch

from mmbench.engine.method import StepControl
from mmbench.engine.optim import build_optimizer, build_scheduler
from mmbench.engine.trainer import build_session, fit
from mmbench.papers.dcpa import text as dcpa_text
from mmbench.recipes.loader import load_paper, resolve


@pytest.fixture(scope="module")
def _shared_data(tmp_path_factory):
    return tmp_path_factory.mktemp("dcpa-data")  # prepared synthetic data + word caches, shared by the tests


@pytest.fixture(autouse=True)
def _dirs(tmp_path, monkeypatch, _shared_data):
    monkeypatch.setenv("MMBENCH_DATA", str(_shared_data))
    monkeypatch.setenv("MMBENCH_RUNS", str(tmp_path / "runs"))


def test_stage1_smoke_training_learns():
    result = fit(resolve("dcpa/flickr30k-intra", smoke=True), seed=0, log=lambda s: None)
    test = result["metrics"]["test"]
    # chance RSUM on 16 images × 80 captions is about 180
    assert test["rsum"] > 260, test
    assert test["select_rsum"] == test["rsum"]  # stage 1: no offset
    assert set(test) >= {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum", "r1_sum"}
    log = [json.loads(line) for line in open(f"{result['run_dir']}/log.jsonl")]
    assert not any("warnings" in row for row in log)  # it learns: no "not learning" warning (issue 29)


def _step(session, optimizer, epoch):
    method, model = session.method, session.model
    control = StepControl(model, {"main": optimizer}, {"main": build_scheduler(optimizer, method.recipe.train.optimizers["main"].schedule, 10, 1)},
                          None, "global", session.ctx, epoch=epoch)
    model.train()
    batch = next(iter(method.train_batches(epoch)))
    return method.train_step(model, batch, control)


def test_stage_two_freezes_intra_pam_and_trains_inter_pam():
    resolved = resolve("dcpa/flickr30k", ["model.stage1_epochs=1", "train.epochs=2", "model.max_violation_warmup_epochs=1"], smoke=True)
    session = build_session(resolved, seed=0)
    method, model = session.method, session.model
    optimizer = build_optimizer(model.named_parameters(), resolved.recipe.train.optimizers["main"])
    snapshot = lambda module: [p.detach().clone() for p in module.parameters()]  # noqa: E731
    changed = lambda before, module: any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))  # noqa: E731

    method.on_epoch_start(0)
    intra, inter = snapshot(model.intra), snapshot(model.inter)
    logs = _step(session, optimizer, 0)
    assert logs["stage"] == 1.0 and changed(intra, model.intra) and not changed(inter, model.inter)

    method.on_epoch_start(1)
    assert int(model.stage) == 2
    intra, inter = snapshot(model.intra), snapshot(model.inter)
    logs = _step(session, optimizer, 1)
    assert logs["stage"] == 2.0 and not changed(intra, model.intra) and changed(inter, model.inter)
    assert logs["lr"] == pytest.approx(resolved.recipe.train.optimizers["main"].lr)  # lr restarts at stage 2


def test_word_cache_is_built_once(monkeypatch, tmp_path):
    monkeypatch.setenv("MMBENCH_DATA", str(tmp_path / "fresh"))
    resolved = resolve("dcpa/flickr30k-intra", smoke=True)
    build_session(resolved, seed=0)

    def boom(*args, **kwargs):
        raise AssertionError("the word cache was rebuilt")

    monkeypatch.setattr(dcpa_text, "_build", boom)
    session = build_session(resolved, seed=1)  # another seed reuses the same cache
    words = session.method.words["dev"]
    assert len(words) == 80 and words.dim == 32


def test_coco_full_run_reports_5k_and_1k_fold_metrics_and_selects_stage_two(tmp_path):
    # the first 10 images of each split keep it fast; testall's 10 images make 5 folds of 2
    overrides = ["model.stage1_epochs=1", "train.epochs=2", "model.max_violation_warmup_epochs=0",
                 "data.subset=50", "model.fold_images=2"]
    result = fit(resolve("dcpa/coco", overrides, smoke=True), seed=0, log=lambda s: None)
    test = result["metrics"]["test"]
    assert result["examples"]["test"] == 50  # testall's first 10 images × 5
    assert {"rsum", "fold1k_rsum", "fold1k_i2t_r1", "fold1k_t2i_r10"} <= set(test)
    assert test["fold1k_rsum"] == pytest.approx(sum(test[f"fold1k_{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)))
    assert result["selected_epoch"] == 2 and test["select_rsum"] > 1000  # the stage-2 epoch was selected
    log = [json.loads(line) for line in open(f"{result['run_dir']}/log.jsonl")]
    assert [row["train"]["stage"] for row in log] == [1.0, 2.0]
    preds = [json.loads(line) for line in open(f"{result['run_dir']}/predictions-test.jsonl")]
    assert len(preds) == 50 and {p["fold"] for p in preds} == {0, 1, 2, 3, 4}


def test_recipes_and_paper_tables_resolve():
    paper = load_paper("dcpa")
    assert [t.id for t in paper.tables] == ["table1", "table2", "table3", "table4", "figure4"]
    for table in paper.tables:
        for row in table.rows:
            if row.recipe:
                for dataset in {c.dataset for c in table.columns}:
                    resolved = resolve(row.recipe.format(dataset=dataset), row.overrides)
                    assert resolved.recipe.paper == "dcpa"
    full = resolve("dcpa/flickr30k")
    assert full.model_config.stage1_epochs == 50 and full.recipe.train.epochs == 80
    assert full.recipe.train.batch_size == 300 and full.model_config.stage2_batch_size == 84
    assert resolve("dcpa/flickr30k-intra").recipe.train.epochs == 50
