"""ITM's official variant against the released code (NUSTM/ITM), from the numbers it computed.

`scripts/parity/itm.py` ran the authors' Coarse2Fine and BertAdam (tiny random configuration,
float64, dropout 0) and saved inputs, weights and outputs to tests/fixtures/parity/itm.json. Here our
official variant, configured by recipes/itm/twitter15-official.yaml (model switches, bertadam with
its own warm-up curve plus the engine's, per-tensor clipping), is loaded with the same weights and
must reproduce, within 1e-5: the forward outputs (sentiment logits, relevance logits, D), each loss,
and three iterations of the alternating training loop (every loss and every weight afterwards).
Needs nothing from ../shared.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmbench.results.numbers import load_numbers

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "parity" / "itm.json"
TOL = 1e-5


def _official_recipe(fixture: dict):
    from mmbench.recipes.loader import resolve

    resolved = resolve("itm/twitter15-official")
    sizes, roberta = fixture["sizes"], fixture["roberta"]
    cfg = resolved.model_config.model_copy(update={
        "region_dim": sizes["region_dim"], "num_regions": sizes["num_regions"], "num_heads": roberta["num_attention_heads"],
        "ffn_dim": roberta["intermediate_size"], "dropout": 0.0, "relevance_dropout": 0.0})  # the script's dropout shim
    return resolved.recipe.train, cfg


def build(fixture: dict):
    """Our official network with the released weights, and the method that trains it."""
    from transformers import RobertaConfig, RobertaModel

    from mmbench.papers.itm.method import ITM
    from mmbench.papers.itm.model import ITMNetwork

    train, cfg = _official_recipe(fixture)
    encoder = RobertaModel(RobertaConfig(**fixture["roberta"]), add_pooling_layer=False)
    model = ITMNetwork(encoder, cfg).to(torch.float64)
    model.load_state_dict(fixture["weights"], strict=False)
    missing = set(model.state_dict()) - set(fixture["weights"])
    assert all("position_ids" in k for k in missing), missing  # every weight comes from the released model
    method = ITM.__new__(ITM)  # only config-driven parts are used: aux_loss / train_step
    method.config = cfg
    return model, method, train


def batches(inputs: dict) -> tuple[dict, dict]:
    aux = {"input_ids": inputs["vg_ids"], "attention_mask": inputs["vg_mask"], "regions": inputs["vg_regions"],
           "relation": inputs["vg_relation"], "alignment": inputs["vg_alignment"]}
    main = {"input_ids": inputs["sa_ids"], "attention_mask": inputs["sa_mask"], "regions": inputs["sa_regions"],
            "labels": inputs["sa_labels"]}
    return aux, main


def forward_checks(fixture: dict) -> dict[str, float]:
    from mmbench.papers.itm.model import alignment_loss, relevance_loss, sentiment_loss

    model, method, _ = build(fixture)
    expected, (aux, main) = fixture["expected"], batches(fixture["inputs"])
    worst = {}
    with torch.no_grad():
        for prefix, batch in (("vg", aux), ("sa", main)):
            out = model(batch["input_ids"], batch["attention_mask"], batch["regions"])
            worst[f"{prefix} logits"] = (out["logits"] - expected[f"{prefix}_logits"]).abs().max().item()
            worst[f"{prefix} relevance logits"] = (out["relevance_logits"] - expected[f"{prefix}_relevance_logits"]).abs().max().item()
            worst[f"{prefix} D"] = (out["alignment"] - expected[f"{prefix}_alignment"]).abs().max().item()
            if prefix == "vg":
                l_re = relevance_loss(out["relevance_logits"], batch["relation"], method.config.relevance_head)
                l_att = alignment_loss(out["alignment"], batch["alignment"], batch["relation"], method.config.kl_normaliser)
                worst["loss L_RE"] = abs(l_re.item() - expected["vg_loss_re"].item())
                worst["loss L_ATT"] = abs(l_att.item() - expected["vg_loss_att"].item())
            else:
                l_tmsc = sentiment_loss(out["logits"], batch["labels"])
                worst["loss L_TMSC"] = abs(l_tmsc.item() - expected["sa_loss_sentiment"].item())
    return worst


def training_checks(fixture: dict) -> dict[str, float]:
    from mmbench.engine.method import RunContext, StepControl
    from mmbench.engine.optim import build_optimizer, build_scheduler
    from mmbench.engine.runtime import World

    model, method, train = build(fixture)
    run = fixture["train"]
    optimizers, schedulers = {}, {}
    for name, lr in (("aux", run["vg_lr"]), ("main", run["sa_lr"])):
        cfg = train.optimizers[name]  # the recipe's bertadam + bert_warmup_linear, at the fixture's sizes
        cfg = cfg.model_copy(update={"lr": lr, "warmup": run["warmup"], "t_total": run["t_total"], "schedule": cfg.schedule.model_copy(
            update={"warmup_ratio": run["warmup"], "t_total": run["t_total"]})})
        optimizers[name] = build_optimizer(model.named_parameters(), cfg)
        schedulers[name] = build_scheduler(optimizers[name], cfg.schedule, 100, 100)
    ctx = RunContext(device=torch.device("cpu"), autocast_dtype=None, world=World(), seed=0)
    step = StepControl(model, optimizers, schedulers, train.grad_clip, train.grad_clip_mode, ctx)
    aux, main = batches(fixture["inputs"])
    model.train()
    losses = []
    for _ in range(run["steps"]):
        logs = method.train_step(model, {"aux": aux, "main": main}, step)
        losses.append([logs["loss_att"], logs["loss_re"], logs["loss"]])
    got = torch.tensor(losses, dtype=torch.float64)
    worst = {"step losses (KL, RE, TMSC)": (got - fixture["expected"]["step_losses"][:, 1:]).abs().max().item()}
    trained = model.state_dict()
    assert set(fixture["trained"]) <= set(trained), set(fixture["trained"]) - set(trained)
    worst["weights after 3 steps"] = max((trained[k] - v).abs().max().item() for k, v in fixture["trained"].items())
    moved = max((fixture["trained"][k] - fixture["weights"][k]).abs().max().item() for k in fixture["trained"])
    worst["(weights moved by)"] = moved
    return worst


def compare(fixture: dict) -> dict[str, float]:
    return {**forward_checks(fixture), **training_checks(fixture)}


@pytest.fixture(scope="module")
def fixture():
    return load_numbers(FIXTURE)


def test_parity_itm_forward_outputs_and_losses(fixture):
    worst = forward_checks(fixture)
    assert len(worst) == 9
    for key, value in worst.items():
        assert value <= TOL, f"{key}: ours differs from the released code by {value:.2e}"


def test_parity_itm_three_bertadam_steps(fixture):
    worst = training_checks(fixture)
    assert worst.pop("(weights moved by)") > 1e-2  # the steps did update the weights (lr > 0 after warm-up)
    for key, value in worst.items():
        assert value <= TOL, f"{key}: ours differs from the released code by {value:.2e}"
