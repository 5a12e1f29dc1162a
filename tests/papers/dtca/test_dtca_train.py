"""DTCA end to end on synthetic Twitter data (TomBERT's raw format, tiny random encoders): smoke
training learns, the released-code variant runs, every table row resolves, encoder choices of
Figure 5 build, images follow the ViT processor and the missing-image policy, the optimiser sees the
recipe's warm-up/decay schedule, and β = 0 trains differently from β > 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmbench.engine.trainer import build_session, fit
from mmbench.errors import DataError
from mmbench.recipes.loader import load_paper, resolve

# small and fast on 2 shared cores: ~80 training sentences
FAST = ["data.subset=120", "train.batch_size=8"]


@pytest.fixture(scope="module")
def _data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("dtca-data")  # synthetic data is prepared once for the module


@pytest.fixture(autouse=True)
def _isolated(_data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MMBENCH_DATA", str(_data_root))
    monkeypatch.setenv("MMBENCH_RUNS", str(tmp_path / "runs"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is several times faster on busy 2-core runners
    yield
    torch.set_num_threads(threads)


def test_smoke_dtca_learns_on_synthetic_data(tmp_path):
    result = fit(resolve("dtca/twitter15", [*FAST, "train.epochs=3"], smoke=True), seed=0, root=tmp_path / "runs", log=lambda _: None)
    test = result["metrics"]["test"]
    assert set(test) >= {"f1", "precision", "recall", "text_f1", "gold_truncated"}
    # names + sentiment phrases are easy: far above the ~0 F1 of an untrained tagger
    assert test["f1"] > 40, test
    assert test["gold_truncated"] == 0 and test["gold_aspects"] > 0
    assert not result["reportable"] and result["smoke"]
    assert result["final_train"]["ot_loss"] > 0 and result["final_train"]["crf_loss"] > 0


def test_untrained_tagger_scores_low(tmp_path):
    session = build_session(resolve("dtca/twitter15", FAST, smoke=True), seed=0)
    from mmbench.engine.trainer import evaluate

    metrics, predictions = evaluate(session, session.model, "dev")
    assert metrics["f1"] < 20
    assert all(isinstance(p["pred"], list) for p in predictions)


def test_text_only_taggers_train(tmp_path):
    for overrides in (["model.tagger=text_softmax", "model.image_encoder=null", "model.alpha=1.0", "model.beta=0.0"],
                      ["model.tagger=text_crf", "model.image_encoder=null", "model.alpha=0.0", "model.beta=0.0"]):
        resolved = resolve("dtca/twitter17", [*FAST, "train.epochs=3", *overrides], smoke=True)
        result = fit(resolved, seed=0, root=tmp_path / "runs", log=lambda _: None)
        assert result["metrics"]["test"]["f1"] > 20, (overrides, result["metrics"]["test"])
        assert result["final_train"].keys() == ({"loss", "text_loss"} if "text_softmax" in overrides[0] else {"loss", "crf_loss", "text_loss"})


def test_official_variant_runs_and_is_not_reportable(tmp_path):
    resolved = resolve("dtca/twitter15-official", [*FAST, "train.epochs=3", "data.subset=40"], smoke=True)
    assert resolved.recipe.variant == "official" and resolved.recipe.train.select_split == "test"
    assert not resolved.recipe.reportable
    session = build_session(resolved, seed=0)
    batch = session.method.collate(session.method.examples["train"][:3])
    assert batch["input_ids"].shape[1] == 60  # padded to max_length like the released code
    # the released OT mask marks the padding positions, not the tokens
    assert torch.equal(batch["ot_text_mask"], batch["attention_mask"] == 0)
    terms = session.model(batch)
    assert torch.isfinite(terms["loss"]) and terms["ot_loss"] > 0
    result = fit(resolved, seed=0, root=tmp_path / "runs", log=lambda _: None)
    assert result["variant"] == "official" and not result["reportable"]
    assert resolved.recipe.train.seeds == [0] and resolved.recipe.train.precision == "fp32"  # one run, as released
    # the text head at its own best test epoch (released `text_best_metric`), over every test evaluation
    import json

    logged = [row["test"]["text_f1"] for row in map(json.loads, (Path(result["run_dir"]) / "log.jsonl").read_text().splitlines())]
    assert result["metrics"]["test"]["text_best_f1"] == pytest.approx(max(logged + [result["metrics"]["test"]["text_f1"]]))


def test_every_table_row_resolves_for_both_datasets():
    paper = load_paper("dtca")
    assert [t.id for t in paper.tables] == ["table2", "table3", "figure4", "figure5"]
    for table in paper.tables:
        for row in table.rows:
            if row.recipe:
                for dataset in ("twitter15", "twitter17"):
                    resolved = resolve(row.recipe.format(dataset=dataset), row.overrides, smoke=True)
                    assert resolved.recipe.dataset == dataset
    ablation = {r.label: r.overrides for r in paper.tables[1].rows}
    assert ablation["w/o TE"] == ["model.alpha=0.0", "model.beta=1.0"]  # §3.5


@pytest.mark.parametrize("override", ["model.image_encoder=microsoft/swin-tiny-patch4-window7-224",
                                      "model.image_encoder=facebook/deit-base-patch16-224",
                                      "model.text_encoder=albert-base-v2", "model.text_encoder=google/electra-base-discriminator"])
def test_figure5_encoders_build_and_step_with_tiny_stand_ins(override):
    session = build_session(resolve("dtca/twitter15", [*FAST, "data.subset=20", override], smoke=True), seed=0)
    model = session.model
    batch = session.method.collate(session.method.examples["train"][:2])
    if next(model.parameters()).dtype == torch.float64:  # smoke runs compute in float64 (the engine casts batches)
        from mmbench.engine.precision import to_float64

        batch = to_float64(batch)
    encoded = model.encode(batch)
    if "swin" in override:  # 16-d tiny Swin projected to the 32-d text width; no [CLS] to drop
        assert isinstance(model.image_projection, torch.nn.Linear) and encoded["image"].shape[1:] == (16, 32)
    if "deit" in override:  # [CLS] and distillation tokens dropped: 16 patches remain
        assert encoded["image"].shape[1] == 16
    loss = model(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.image_encoder.parameters())


def test_pixels_follow_vit_normalisation_and_missing_image_policy(tmp_path):
    from PIL import Image

    resolved = resolve("dtca/twitter15", [*FAST, "data.subset=10"], smoke=True)
    method = build_session(resolved, seed=0).method
    example = method.examples["train"][0]
    path = method.images_root / example["image_id"]
    array = np.asarray(Image.open(path).convert("RGB").resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255
    expected = torch.from_numpy((array - 0.5) / 0.5).permute(2, 0, 1)
    assert torch.allclose(method._pixels(example["image_id"]), expected, atol=2e-2)
    with pytest.raises(DataError, match="missing"):
        method._pixels("nope.jpg")
    method.recipe.data.missing_image = "blank"
    assert method._pixels("nope.jpg").abs().sum() == 0




def test_the_optimiser_sees_the_recipes_warmup_and_decay_horizon(tmp_path, monkeypatch):
    """'Warmup decay of 0.1' (recipe: linear_warmup, warmup_ratio 0.1 over train.epochs): at every step
    the optimiser's lr is base · (s+1)/W during warm-up, then base · (T − s)/(T − W), with T = epochs ×
    steps per epoch of THIS run and W = ⌊0.1·T⌋; early stopping does not shorten T."""
    from mmbench.papers.dtca.method import DTCA

    seen = []
    original = DTCA.train_step

    def recording(self, model, batch, step):
        seen.append(step.optimizers["main"].param_groups[0]["lr"])
        return original(self, model, batch, step)

    monkeypatch.setattr(DTCA, "train_step", recording)
    resolved = resolve("dtca/twitter15", [*FAST, "data.subset=60", "train.epochs=5", "train.patience=1"], smoke=True)
    schedule = resolved.recipe.train.optimizers["main"].schedule
    assert (schedule.name, schedule.warmup_ratio) == ("linear_warmup", 0.1)
    result = fit(resolved, seed=0, root=tmp_path / "runs", log=lambda _: None)
    per_epoch = -(-result["examples"]["train"] // resolved.recipe.train.batch_size)
    total, base = per_epoch * resolved.recipe.train.epochs, resolved.recipe.train.optimizers["main"].lr
    warmup = int(0.1 * total)
    expected = [base * ((s + 1) / warmup if s < warmup else (total - s) / (total - warmup)) for s in range(len(seen))]
    assert len(seen) == per_epoch * result["epochs_run"] and warmup >= 2
    assert seen == pytest.approx(expected, rel=1e-12)
    assert max(seen) == pytest.approx(base)


def test_smoke_run_with_beta_zero_differs_from_beta_positive(tmp_path):
    """TPA is alive in a smoke run: β = 0.6 moves the other loss terms, not just adds its own (with the
    literal eq (15) cost, `model.ot_cost=nmse`, the CRF loss moves by ~1e-5 relative: inert)."""
    runs = {}
    for beta in ("0.0", "0.6"):
        resolved = resolve("dtca/twitter15", ["data.subset=60", "train.batch_size=8", "train.epochs=2", f"model.beta={beta}"], smoke=True)
        runs[beta] = fit(resolved, seed=0, root=tmp_path / "runs", log=lambda _: None)["final_train"]
    assert "ot_loss" not in runs["0.0"] and runs["0.6"]["ot_loss"] > 0.1
    for term, at_least in (("crf_loss", 1e-3), ("text_loss", 1e-2)):
        change = abs(runs["0.6"][term] - runs["0.0"][term]) / runs["0.0"][term]
        assert change > at_least, (term, change, runs)
