"""DTCA's official variant against the released code (windforfurture/DTCA), from the numbers it computed.

`scripts/parity/dtca.py` ran the authors' DTCAModel, IPOT and cal_f1 and main.py's HF Trainer
optimiser (tiny random configuration, float64, dropout 0) and saved inputs, weights and outputs to
tests/fixtures/parity/dtca.json. Here our official variant, configured by
recipes/dtca/twitter15-official.yaml, is loaded with the same weights and must reproduce, within 1e-5:
the emissions and text-head logits, the CRF loss (sum / 10, non-contiguous mask), argmax decoding, the
IPOT distance with the inverted mask (50 iterations), the joint loss, three optimiser steps (AdamW,
the Trainer's no-decay groups, linear decay, clipping: each loss and every weight afterwards) and
cal_f1's P/R/F1 and predicted pairs on a fixed set of predictions. IPOT is also checked alone on
distinct random states (within 1e-9, float64 on both sides): in the model batch the transported
positions are padding with equal states, where the iteration count, β and k change nothing. The
recipe's lr schedule must give the released Trainer's lr factor at every step of a 3-epoch horizon,
and its lr, batch size, α, β and weight decay main.py's defaults. Needs nothing from ../shared.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmbench.results.numbers import load_numbers

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "parity" / "dtca.json"
TOL = 1e-5
IPOT_TOL = 1e-9  # float64 on both sides; 49 instead of 50 iterations moves a distance by ~3e-5


def _official_recipe(fixture: dict):
    from mmbench.recipes.loader import resolve

    resolved = resolve("dtca/twitter15-official")
    hidden = fixture["roberta"]["hidden_size"]
    # the released head width is the hidden size (768 at full size); dropout 0 is the script's shim
    cfg = resolved.model_config.model_copy(update={"head_dim": hidden, "dropout": 0.0,
                                                   "max_length": fixture["inputs"]["input_ids"].shape[1]})
    return resolved.recipe.train, cfg


def build(fixture: dict):
    """Our official network with the released weights, and the method that trains and scores it."""
    from transformers import RobertaConfig, RobertaModel, ViTConfig, ViTModel

    from mmbench.papers.dtca.method import DTCA
    from mmbench.papers.dtca.model import DTCAModel

    train, cfg = _official_recipe(fixture)
    text = RobertaModel(RobertaConfig(**fixture["roberta"]), add_pooling_layer=False)
    image = ViTModel(ViTConfig(**fixture["vit"]), add_pooling_layer=False)
    model = DTCAModel(cfg, text, image, fixture["vit"]["hidden_size"], prefix_tokens=1).to(torch.float64)
    model.load_state_dict(fixture["weights"], strict=False)
    missing = set(model.state_dict()) - set(fixture["weights"])
    assert all("position_ids" in k for k in missing), missing  # every weight comes from the released model
    method = DTCA.__new__(DTCA)  # only config-driven parts are used: parameters_for / train_step / metrics
    method.config, method.truncated = cfg, {}
    return model, method, train


def our_batch(inputs: dict, ot_text_tokens: str) -> dict:
    """What our collate gives for the released inputs (first sub-tokens = the labelled positions)."""
    from mmbench.papers.dtca.method import ot_token_mask

    labels, length = inputs["labels"], inputs["labels"].shape[1]
    firsts = [torch.nonzero(row != -100).flatten() for row in labels]
    words = max(len(f) for f in firsts)
    word_index = torch.zeros(len(firsts), words, dtype=torch.long)
    word_mask = torch.zeros(len(firsts), words, dtype=torch.bool)
    for b, f in enumerate(firsts):
        word_index[b, : len(f)], word_mask[b, : len(f)] = f, True
    return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"], "token_labels": labels,
            "word_index": word_index, "word_tags": labels.gather(1, word_index).clamp_min(0) * word_mask,
            "word_mask": word_mask,
            "ot_text_mask": torch.stack([ot_token_mask(int(n), length, ot_text_tokens) for n in inputs["attention_mask"].sum(1)]),
            "pixel_values": inputs["pixel_values"]}


def forward_checks(fixture: dict) -> dict[str, float]:
    model, _, _ = build(fixture)
    expected, batch = fixture["expected"], our_batch(fixture["inputs"], model.config.ot_text_tokens)
    worst = {}
    model.train()  # dropout 0
    with torch.no_grad():
        out = model.encode(batch)
        terms = model(batch)
        worst["text-head logits"] = (out["text_logits"] - expected["text_logits"]).abs().max().item()
        worst["emissions (cross_logits)"] = (out["cross_logits"] - expected["cross_logits"]).abs().max().item()
        worst["CRF loss (sum/10, non-contiguous)"] = abs(terms["crf_loss"].item() - expected["crf_loss"].item())
        worst["text loss"] = abs(terms["text_loss"].item() - expected["text_loss"].item())
        from mmbench.papers.dtca.alignment import ipot_loss

        cfg = model.config
        per_sentence = torch.stack([ipot_loss(out["text"][b : b + 1], out["image"][b : b + 1], batch["ot_text_mask"][b : b + 1],
                                              cfg.ipot_proximal_beta, cfg.ipot_iterations, cfg.ipot_k) for b in range(len(out["text"]))])
        worst["IPOT per sentence (inverted mask)"] = (per_sentence - expected["ot_per_sentence"]).abs().max().item()
        worst["IPOT loss"] = abs(terms["ot_loss"].item() - expected["ot_loss"].item())
        worst["joint loss (eq 22)"] = abs(terms["loss"].item() - expected["loss"].item())
        tags = model.decode(batch)["tags"]
        argmax = [expected["argmax"][b, batch["word_index"][b, : len(t)]].tolist() for b, t in enumerate(tags)]
        worst["argmax decoding (tags differing)"] = float(sum(a != b for x, y in zip(tags, argmax) for a, b in zip(x, y)))
    assert expected["ot_per_sentence"][0] == 0 and (expected["ot_per_sentence"][1:] > 0).all()  # row 0 has no padding
    return worst


def training_checks(fixture: dict) -> dict[str, float]:
    from mmbench.engine.method import RunContext, StepControl
    from mmbench.engine.optim import build_optimizer, build_scheduler
    from mmbench.engine.runtime import World

    model, method, train = build(fixture)
    run = fixture["train"]
    cfg = train.optimizers["main"].model_copy(update={"lr": run["lr"]})  # the recipe's adamw, at the fixture's lr
    assert cfg.weight_decay == run["weight_decay"] and train.grad_clip == run["max_grad_norm"]
    optimizer = build_optimizer(method.parameters_for(model, "main"), cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = sorted(names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"])
    assert no_decay == fixture["no_decay"], set(no_decay) ^ set(fixture["no_decay"])  # the Trainer's groups
    schedulers = {"main": build_scheduler(optimizer, cfg.schedule, run["t_total"], run["t_total"])}
    ctx = RunContext(device=torch.device("cpu"), autocast_dtype=None, world=World(), seed=0)
    step = StepControl(model, {"main": optimizer}, schedulers, train.grad_clip, train.grad_clip_mode, ctx)
    batch = our_batch(fixture["inputs"], model.config.ot_text_tokens)
    model.train()
    losses = [method.train_step(model, batch, step)["loss"] for _ in range(run["steps"])]
    worst = {"step losses": (torch.tensor(losses, dtype=torch.float64) - fixture["expected"]["step_losses"]).abs().max().item()}
    trained = model.state_dict()
    worst["weights after 3 steps"] = max((trained[k] - v).abs().max().item() for k, v in fixture["trained"].items())
    worst["(weights moved by)"] = max((fixture["trained"][k] - fixture["weights"][k]).abs().max().item() for k in fixture["trained"])
    return worst


def metric_checks(fixture: dict) -> dict[str, float]:
    from mmbench.papers.dtca.mabsa import tags_to_triples

    _, method, _ = build(fixture)
    expected = fixture["expected"]
    predictions = []
    for s, (row, word_ids) in enumerate(zip(expected["metric_preds"].tolist(), expected["metric_word_ids"].tolist())):
        tags = [t for j, (t, w) in enumerate(zip(row, word_ids)) if w >= 0 and w != word_ids[j - 1]]  # first sub-tokens
        gold = [g[1:] for g in expected["metric_gold"].tolist() if g[0] == s]
        predictions.append({"gold": gold, "pred": [list(t) for t in tags_to_triples(tags)], "text_pred": []})
    metrics = method.metrics(predictions, "test")
    ours = torch.tensor([metrics["precision"], metrics["recall"], metrics["f1"]], dtype=torch.float64)
    pairs = sorted([s, *t] for s, p in enumerate(predictions) for t in p["pred"])
    return {"cal_f1 P/R/F1": (ours - expected["metric_prf"]).abs().max().item(),
            "cal_f1 predicted pairs differing": float(len(set(map(tuple, pairs)) ^ set(map(tuple, expected["metric_pred_pairs"].tolist()))))}


def ipot_checks(fixture: dict) -> dict[str, float]:
    """Our official IPOT term (the recipe's β, iterations, k and text mask) on distinct random states."""
    from mmbench.papers.dtca.alignment import ipot_loss
    from mmbench.papers.dtca.method import ot_token_mask

    _, cfg = _official_recipe(fixture)
    expected = fixture["expected"]
    text = expected["ipot_text"].clone().requires_grad_()
    image = expected["ipot_image"].clone().requires_grad_()
    mask = torch.stack([ot_token_mask(int(n), text.shape[1], cfg.ot_text_tokens) for n in expected["ipot_lengths"]])
    args = (cfg.ipot_proximal_beta, cfg.ipot_iterations, cfg.ipot_k)
    per_sentence = torch.stack([ipot_loss(text[b : b + 1], image[b : b + 1], mask[b : b + 1], *args) for b in range(len(text))])
    ipot_loss(text, image, mask, *args).backward()
    return {"IPOT distinct states: per sentence": (per_sentence.detach() - expected["ipot_per_sentence"]).abs().max().item(),
            "IPOT distinct states: d/d text": (text.grad - expected["ipot_grad_text"]).abs().max().item(),
            "IPOT distinct states: d/d image": (image.grad - expected["ipot_grad_image"]).abs().max().item()}


def schedule_checks(fixture: dict) -> dict[str, float]:
    """The official recipe's optimiser settings against main.py's Trainer (defaults read from its source)."""
    from mmbench.engine.optim import schedule_factor
    from mmbench.recipes.loader import resolve

    resolved = resolve("dtca/twitter15-official")
    train, model, released = resolved.recipe.train, resolved.model_config, fixture["main_defaults"]
    main = train.optimizers["main"]
    epochs, per_epoch = fixture["horizon"]["epochs"], fixture["horizon"]["steps_per_epoch"]
    ours = torch.tensor([schedule_factor(main.schedule, step, epochs * per_epoch, per_epoch) for step in range(epochs * per_epoch)],
                        dtype=torch.float64)
    return {"lr factor per step (Trainer schedule)": (ours - fixture["expected"]["trainer_lr_factors"]).abs().max().item(),
            "base lr": abs(main.lr - released["lr"]), "weight decay": abs(main.weight_decay - released["weight_decay"]),
            "batch size": float(abs(train.batch_size - released["batch_size"])),
            "alpha, beta": max(abs(model.alpha - released["alpha"]), abs(model.beta - released["beta"]))}


def compare(fixture: dict) -> dict[str, float]:
    return {**forward_checks(fixture), **training_checks(fixture), **metric_checks(fixture), **ipot_checks(fixture),
            **schedule_checks(fixture)}


@pytest.fixture(scope="module")
def fixture():
    return load_numbers(FIXTURE)


def test_parity_dtca_forward_losses_ipot_and_decoding(fixture):
    worst = forward_checks(fixture)
    assert len(worst) == 8
    for key, value in worst.items():
        assert value <= TOL, f"{key}: ours differs from the released code by {value:.2e}"


def test_parity_dtca_three_trainer_steps(fixture):
    worst = training_checks(fixture)
    assert worst.pop("(weights moved by)") > 1e-2  # the steps did update the weights
    for key, value in worst.items():
        assert value <= TOL, f"{key}: ours differs from the released code by {value:.2e}"


def test_parity_dtca_cal_f1(fixture):
    worst = metric_checks(fixture)
    assert fixture["expected"]["metric_prf"][2] > 0 and len(fixture["expected"]["metric_pred_pairs"]) > 10
    for key, value in worst.items():
        assert value <= TOL, f"{key}: ours differs from the released code by {value:.2e}"


def test_parity_dtca_ipot_on_distinct_states(fixture):
    expected = fixture["expected"]["ipot_per_sentence"]
    assert expected[0] == 0 and (expected[1:] > 0.1).all()  # row 0 fills the length: nothing transported
    for key, value in ipot_checks(fixture).items():
        assert value <= IPOT_TOL, f"{key}: ours differs from the released code by {value:.2e}"


def test_official_recipe_schedule_is_the_released_trainers(fixture):
    factors = fixture["expected"]["trainer_lr_factors"]
    assert factors[0] == 1.0 and factors[-1] < 0.05  # no warm-up, linear decay towards 0
    for key, value in schedule_checks(fixture).items():
        assert value <= 1e-12, f"{key}: the official recipe differs from the released Trainer by {value:.2e}"
