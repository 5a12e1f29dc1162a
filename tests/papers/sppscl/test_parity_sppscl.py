"""Parity of SPP-SCL's `variant: official` with the released code, from the fixture written by
`scripts/parity/sppscl.py` (released MSA_Model, CLoss, CLoss_T_I and train.py's two-step iteration with
AdamW and StepLR, float64). Our official variant is rebuilt with the same weights and inputs and driven by
its own `train_step`, optimiser and schedule; everything must agree within 1e-5. Needs no ../shared."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mmbench.results.numbers import load_numbers

from mmbench.engine.method import RunContext, StepControl
from mmbench.engine.optim import build_optimizer, build_scheduler
from mmbench.engine.runtime import World
from mmbench.papers.sppscl.features import FrozenExtractor
from mmbench.papers.sppscl.losses import alignment_check, inter_supcon, intra_supcon
from mmbench.papers.sppscl.method import SPPSCL, SPPSCLConfig
from mmbench.recipes.loader import resolve

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "parity" / "sppscl.json"
TOL = 1e-5
D = 32

# released parameter name prefixes → ours
NAMES = {"Attention.fc.": "heads.text.layer_scores.", "Attention.shared_text_encoding.LSTM.": "heads.text.lstm.",
         "Conv_I.": "heads.image.conv.", "Align_Module_I.shared_image_linear.": "heads.image.project.",
         "Align_Module_T.shared_text_linear.": "heads.text.project.", "Q_I.0.": "heads.cmf.maps.q_image.0.",
         "K_I.0.": "heads.cmf.maps.k_image.0.", "V_I.0.": "heads.cmf.maps.v_image.0.", "Q_T.0.": "heads.cmf.maps.q_text.0.",
         "K_T.0.": "heads.cmf.maps.k_text.0.", "V_T.0.": "heads.cmf.maps.v_text.0.", "classifier.": "heads.classifier.",
         "fc.": "heads.classifier.4."}
ALIGN = {"Align_I.": "heads.image.project.", "Align_T.": "heads.text.project."}  # their Align_* = our layers 6, 7


def our_name(name: str) -> str:
    for theirs, ours in ALIGN.items():
        if name.startswith(theirs):
            index, rest = name[len(theirs):].split(".", 1)
            return f"{ours}{int(index) + 6}.{rest}"
    for theirs, ours in NAMES.items():
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    raise KeyError(name)


def our_value(name: str, value: torch.Tensor) -> torch.Tensor:
    """The released fusion is [value_I_T, value_T_I, I, T] = [our T_m, our I_m, I, T]; ours is [I_m, T_m, I, T]."""
    if name == "classifier.0.weight":
        return torch.cat([value[:, D : 2 * D], value[:, :D], value[:, 2 * D :]], dim=1)
    return value


class FakeBert(torch.nn.Module):
    """The recorded states of BERT layers 9-12 as the last four hidden states (same stand-in as the script)."""

    def __init__(self, states: torch.Tensor):
        super().__init__()
        self.states, self.config = states, SimpleNamespace(hidden_size=states.shape[-1])

    def forward(self, input_ids=None, attention_mask=None, output_hidden_states=True, **_):
        layers = [self.states[:, k] for k in range(4)]
        return SimpleNamespace(hidden_states=tuple([torch.zeros_like(layers[0])] * 9 + layers))


@pytest.fixture(scope="module")
def fixture():
    return load_numbers(FIXTURE)


@pytest.fixture(autouse=True)
def _float64():
    torch.set_num_threads(1)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def build(f: dict):
    """Our official variant (recipe sppscl/mvsa-single-official, dropout 0) on the fixture's inputs and weights."""
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in f["inputs"].items()}
    b, positions = inputs["map_a"].shape[:2]
    side = int(positions ** 0.5)
    image = torch.relu(inputs["map_a"] @ inputs["map_b"]).transpose(1, 2).reshape(b, -1, side, side)
    states = inputs["text_a"] @ inputs["text_b"]
    resolved = resolve("sppscl/mvsa-single-official")
    config = SPPSCLConfig(**{**resolved.recipe.model, "dropout": 0.0})
    method = SPPSCL(resolved.recipe, config, None, {"label_names": ["positive", "neutral", "negative"]},
                    RunContext(torch.device("cpu"), None, World(), 0))
    method.uses_text = method.uses_image = True
    method.extractor = FrozenExtractor(FakeBert(states), torch.nn.Identity(), config.encoder_layers)
    method.image_channels, method.n_labels = image.shape[1], 3
    model = method.build_model()
    weights = dict(f["init"]["weights"])
    for name, (u, v) in f["init"]["factors"].items():
        weights[name] = u.double() @ v.double()
    ours = dict(model.named_parameters())
    assert {our_name(n) for n in weights} == {n for n, p in ours.items() if p.requires_grad}
    with torch.no_grad():
        for name, value in weights.items():
            target = ours[our_name(name)]
            target.copy_(our_value(name, value.double()).reshape(target.shape))
    words = states.shape[2] - 2
    ids = torch.zeros(b, words + 2, dtype=torch.long)
    word_mask = torch.zeros_like(ids)
    word_mask[:, 1:-1] = 1  # the released slice 1..N of the padded sequence
    batch = {"labels": inputs["labels"], "input_ids": ids, "attention_mask": torch.ones_like(ids), "word_mask": word_mask,
             "pixels": image}
    return method, model, batch


def close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    ours, theirs = torch.as_tensor(ours, dtype=torch.float64), torch.as_tensor(theirs, dtype=torch.float64)
    assert ours.shape == theirs.shape, what
    diff = (ours - theirs).abs().max().item() if ours.numel() else 0.0
    assert diff <= TOL, f"{what}: max |ours - released| = {diff:.3g}"


def test_parity_sppscl_two_step_training(fixture):
    f = fixture
    method, model, batch = build(f)
    labels = batch["labels"]
    train = f["train"]
    opt_cfg = method.recipe.train.optimizers["main"]
    opt_cfg = opt_cfg.model_copy(update={"lr": train["lr"], "schedule": opt_cfg.schedule.model_copy(
        update={"step_size": train["step_size"], "gamma": train["gamma"]})})
    assert (opt_cfg.name, opt_cfg.weight_decay, tuple(opt_cfg.betas), opt_cfg.eps) == (
        "adamw", train["weight_decay"], tuple(train["betas"]), train["eps"])
    assert method.config.lambda_ce == train["ce_weight"] and method.config.temperature == train["tau"]
    optimizer = build_optimizer(method.parameters_for(model, "main"), opt_cfg)
    scheduler = build_scheduler(optimizer, opt_cfg.schedule, total_steps=len(f["steps"]), steps_per_epoch=1)
    step = StepControl(model, {"main": optimizer}, {"main": scheduler}, None, "global", method.ctx)
    outputs: list[dict] = []
    model.heads.register_forward_hook(lambda module, args, out: outputs.append({k: v.detach() for k, v in out.items()}))
    model.train()
    b = len(labels)
    for i, row in enumerate(f["steps"]):
        close(optimizer.param_groups[0]["lr"], row["lr"], f"step {i}: learning rate (StepLR)")
        outputs.clear()
        logs = method.train_step(model, batch, step)
        first, second = outputs[0], outputs[1]
        close(first["logits"], row["logits"], f"step {i}: logits")
        close(5.0 * logs["ce"], row["ce"], f"step {i}: 5·CE")
        close(intra_supcon(first["text"], labels, 0.07, "positives", True), row["closs_t"], f"step {i}: CLoss(T)")
        close(intra_supcon(first["image"], labels, 0.07, "positives", True), row["closs_i"], f"step {i}: CLoss(I)")
        close(logs["loss"], row["ce"] + row["closs_t"] + row["closs_i"], f"step {i}: step-1 loss")
        close(second["text"], row["T2"], f"step {i}: second-pass T")
        close(second["image"], row["I2"], f"step {i}: second-pass I")
        close(inter_supcon(second["image"], second["text"], labels, 0.07, "positives", "positive", "text"), row["closs_t_i"],
              f"step {i}: CLoss_T_I")
        check = alignment_check(second["image"], second["text"], labels, 2 / 3, "sigmoid_dot", True, True)
        assert check["count"] == int(row["count"]) == round(logs["inter_count_ratio"] * b * b), f"step {i}: count"
        assert check["threshold"] == int(row["same"] * 2 / 3) == round(logs["inter_threshold_ratio"] * b * b), f"step {i}"
        assert check["run"] == bool(row["run"]) == bool(logs["inter_step_fraction"]), f"step {i}: Algorithm 1's decision"
        if row["run"]:
            close(logs["l_clm"], row["closs_t_i"], f"step {i}: applied CLoss_T_I")
        else:
            assert "l_clm" not in logs
    assert {bool(r["run"]) for r in f["steps"]} == {True, False}  # both branches exercised
    ours = dict(model.named_parameters())
    for name, value in f["final"].items():
        close(ours[our_name(name)], our_value(name, value.double()), f"final {name}")
    for name, projection in f["projections"].items():
        weight = our_value(name, ours[our_name(name)].detach())  # in the released layout (the swap is its own inverse)
        probe = f["probes"][str(weight[0].numel())].double()
        close(weight.reshape(weight.shape[0], -1) @ probe.t(), projection, f"final {name} (projected)")
    buffers = dict(model.named_buffers())
    for name, value in f["buffers"].items():
        close(buffers[our_name(name)], value, f"BatchNorm {name}")
    model.eval()
    with torch.no_grad():
        close(model(batch)["logits"], f["eval_logits"], "eval-mode logits after training")


def test_parity_sppscl_released_torch18_zero_grads_matter(fixture):
    """The switch is live: without torch 1.8.1's zero tensors, the L_clm step leaves the classifier alone and the
    final weights drift from the released ones."""
    method, model, batch = build(fixture)
    method.config = method.config.model_copy(update={"zero_grads_in_inter_step": False})
    train = fixture["train"]
    optimizer = torch.optim.AdamW([p for _, p in method.parameters_for(model, "main")], lr=train["lr"],
                                  betas=train["betas"], eps=train["eps"], weight_decay=train["weight_decay"])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=train["gamma"])
    step = StepControl(model, {"main": optimizer}, {"main": scheduler}, None, "global", method.ctx)
    model.train()
    for _ in fixture["steps"]:
        method.train_step(model, batch, step)
    ours = dict(model.named_parameters())["heads.classifier.4.weight"].detach()
    assert (ours - fixture["final"]["fc.weight"].double()).abs().max() > 1e-3
