"""Parity of SPP-SCL's `variant: official` with the released code (TomorrowJW/SPP-SCL), written as a fixture.

Runs the authors' `model/Model.py` (MSA_Model), `model/Bert.py` and `loss.py` (CLoss, CLoss_T_I) from
../shared/official/TomorrowJW-SPP-SCL, unmodified, and the training iteration of their `train.py`
(re-stated here, since train.py runs at import: step 1 = 5·CE + CLoss(T) + CLoss(I); second forward;
S = sigmoid(T·Iᵀ), the count against int(m·2/3); step 2 = CLoss_T_I(T, I) when it runs; AdamW and
StepLR as released, the scheduler stepped once per epoch, here one batch per epoch). It records:
  - the inputs (frozen-encoder outputs as low-rank factors, labels) and the initial weights;
  - per training step: the logits, CE, CLoss(T), CLoss(I), the second pass's T/I, the condition's count,
    same-label count and decision, CLoss_T_I (when run) and the learning rate;
  - after the steps: every small weight, projections of the larger matrices, BatchNorm buffers and the
    eval-mode logits.
`tests/papers/sppscl/test_parity_sppscl.py` rebuilds our official variant from the fixture and compares.

Shims (the released files stay untouched): `model/ResNet.py` is replaced by an identity (the "image" is
the layer-4 map itself, no weights file); `BertModel/BertConfig.from_pretrained` in Bert.py's namespace
give a stand-in whose hidden_states[9..12] are the recorded states (no download); dropout is 0 (random,
not part of the computation); `optimizer.zero_grad()` keeps zero tensors as torch 1.8.1 (the pinned
version) did, so AdamW moves every parameter in step 2. The head widths are the released hard-coded
ones (2048-channel map, 768-d BERT states, D = 32); the 2048×128 conv and the 768→64 LSTM input weights
and the LSTM's hidden weights are drawn low-rank (and compared through projections) to keep the fixture
small; inputs, initial weights and probes are multiples of 1e-3 (short in the numbers file, exact on both
sides), final weight matrices of more than PROJECT_ABOVE entries are compared through two projections, the
other final weights are stored in float32. Everything runs in float64. `released_optimizer` /
`released_iteration` serve benchmarks/vs_official.py too.

    .venv/bin/python scripts/parity/sppscl.py [--official DIR] [--out tests/fixtures/parity/sppscl.json]
"""

from __future__ import annotations

import argparse
import sys
import types
from contextlib import nullcontext
from pathlib import Path

import torch

from mmbench.results.numbers import save_numbers

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

B, WORDS, SIDE, RANK, STEPS = 12, 6, 2, 4, 3
TRAIN = dict(lr=2e-2, weight_decay=1e-6, betas=(0.9, 0.999), eps=1e-8, step_size=1, gamma=0.5, ce_weight=5.0, tau=0.07)
LSTM = "Attention.shared_text_encoding.LSTM."
LOW_RANK = ("Conv_I.0.weight", LSTM + "weight_ih_l0", LSTM + "weight_ih_l0_reverse", LSTM + "weight_hh_l0",
            LSTM + "weight_hh_l0_reverse")
PROJECT_ABOVE = 512  # final weight matrices with more entries are compared through two projections, not stored


def _short(x: torch.Tensor) -> torch.Tensor:
    """x rounded to a multiple of 1e-3 (float64): a few characters per number in the fixture."""
    return torch.round(x.double() * 1000) / 1000


class _FakeBert(torch.nn.Module):
    """Stands in for BertModel: hidden_states[9..12] are the recorded states [B, 4, WORDS + 2, 768]."""

    states: torch.Tensor | None = None

    def forward(self, input_ids=None, token_type_ids=None, attention_mask=None, return_dict=False):
        layers = [self.states[:, k] for k in range(4)]
        hidden = tuple([torch.zeros_like(layers[0])] * 9 + layers)
        return hidden[-1], hidden[-1][:, 0], hidden


def load_official(folder: Path):
    """Import Model.py (package-relative imports) with a shimmed ResNet and from_pretrained."""
    package = types.ModuleType("sppscl_official")
    package.__path__ = [str(folder / "model")]
    sys.modules["sppscl_official"] = package
    resnet = types.ModuleType("sppscl_official.ResNet")
    resnet.resnet = lambda: torch.nn.Identity()  # the batch's "image" is already the layer-4 map
    sys.modules["sppscl_official.ResNet"] = resnet

    from _fixture import load_module as load

    bert = load("sppscl_official.Bert", folder / "model" / "Bert.py")
    bert.BertConfig = types.SimpleNamespace(from_pretrained=lambda path: types.SimpleNamespace())
    bert.BertModel = types.SimpleNamespace(from_pretrained=lambda path, config=None: _FakeBert())
    model = load("sppscl_official.Model", folder / "model" / "Model.py")
    loss = load("sppscl_official_loss", folder / "loss.py")
    return model, loss


def make_inputs(g: torch.Generator) -> dict:
    """Frozen-encoder outputs at the released widths, kept as small factors (the fixture stores these)."""
    factors = {"map_a": torch.randn(B, SIDE * SIDE, RANK, generator=g), "map_b": torch.randn(RANK, 2048, generator=g),
               "text_a": torch.randn(B, 4, WORDS + 2, RANK, generator=g), "text_b": torch.randn(RANK, 768, generator=g) * 0.6}
    factors = {k: _short(v) for k, v in factors.items()}
    return {**factors, "labels": torch.randint(0, 3, (B,), generator=g)}


def expand(inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(image map [B, 2048, SIDE, SIDE], BERT states of layers 9-12 [B, 4, WORDS + 2, 768]) from the factors."""
    image = torch.relu(inputs["map_a"] @ inputs["map_b"]).transpose(1, 2).reshape(B, 2048, SIDE, SIDE)
    return image, inputs["text_a"] @ inputs["text_b"]


def initial_weights(model: torch.nn.Module, g: torch.Generator) -> dict:
    """Redrawn weights (multiples of 1e-3, stored as they are); the large LSTM/conv matrices as products
    of stored factors."""
    weights, factors = {}, {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in LOW_RANK:
            rows, cols = p.shape[0], p[0].numel()
            u, v = torch.randn(rows, RANK, generator=g) * 0.3, torch.randn(RANK, cols, generator=g) * 0.3 / cols ** 0.5
            factors[name] = (_short(u), _short(v))
            weights[name] = (factors[name][0] @ factors[name][1]).reshape(p.shape)
        else:
            scale = 1.0 if p.dim() == 1 and "bias" not in name else 0.4
            value = torch.randn(p.shape, generator=g) * scale / max(1, p.shape[-1]) ** 0.5 + (1.0 if scale == 1.0 else 0.0)
            weights[name] = _short(value)
    return {"weights": weights, "factors": factors}


def released_optimizer(model: torch.nn.Module, train: dict = TRAIN):
    """train.py's AdamW over the trainable parameters and its StepLR (stepped once per epoch by the caller)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, train["lr"], betas=train["betas"], eps=train["eps"], weight_decay=train["weight_decay"])
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=train["step_size"], gamma=train["gamma"])


def released_losses(loss_mod, tau: float = TRAIN["tau"]) -> tuple:
    """(CLoss for T, CLoss for I, CLoss_T_I) as train.py builds them."""
    return loss_mod.CLoss(tau), loss_mod.CLoss(tau), loss_mod.CLoss_T_I(tau)


def released_iteration(model, args: tuple, labels: torch.Tensor, optimizer, losses: tuple, autocast=nullcontext,
                       ce_weight: float = TRAIN["ce_weight"]) -> dict:
    """One iteration of train.py (step 1, the second forward, the condition, step 2 when it runs); its values, detached."""
    closs_t, closs_i, t_i = losses
    zero_grad = lambda: optimizer.zero_grad(set_to_none=False)  # noqa: E731  torch 1.8.1's zero_grad()
    zero_grad()
    with autocast():
        output, _, T, I = model(*args)
    ce = ce_weight * torch.nn.functional.cross_entropy(output, labels)
    l_t, l_i = closs_t(T, labels), closs_i(I, labels)
    (ce + l_t + l_i).backward()
    optimizer.step()
    with autocast():
        _, _, T2, I2 = model(*args)
    similarity = torch.sigmoid(T2 @ I2.T)
    d = similarity.diag().sum() / len(labels)
    count = (similarity < d).double().sum().item()
    same = (labels[:, None] == labels[None, :]).double().sum().item()
    run = not count >= int(same * (2 / 3))
    row = dict(logits=output.detach(), ce=ce.detach(), closs_t=l_t.detach(), closs_i=l_i.detach(), T2=T2.detach(),
               I2=I2.detach(), count=torch.tensor(count), same=torch.tensor(same), run=torch.tensor(run))
    if run:
        zero_grad()
        l_m = t_i(T2, I2, labels)
        l_m.backward()
        optimizer.step()
        row["closs_t_i"] = l_m.detach()
    return row


def run_official(folder: Path, seed: int) -> dict:
    torch.set_default_dtype(torch.float64)
    model_mod, loss_mod = load_official(folder)
    g = torch.Generator().manual_seed(seed)
    inputs = make_inputs(g)
    image, states = expand(inputs)
    _FakeBert.states = states
    model = model_mod.MSA_Model(types.SimpleNamespace(dropout=0.0, Bert_path="unused"))
    init = initial_weights(model, g)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in init["weights"]:
                p.copy_(init["weights"][name])
    labels = inputs["labels"]
    ids = torch.zeros(B, WORDS + 2, dtype=torch.long)
    args = (image, ids, torch.zeros_like(ids), torch.ones_like(ids))
    optimizer, scheduler = released_optimizer(model)
    losses = released_losses(loss_mod)
    steps = []
    model.train()
    for _ in range(STEPS):  # train.py's iteration; one batch per epoch, so StepLR steps after each
        row = {"lr": torch.tensor(optimizer.param_groups[0]["lr"])}
        row.update(released_iteration(model, args, labels, optimizer, losses))
        if not row["run"]:
            row["closs_t_i"] = losses[2](row["T2"], row["I2"], labels).detach()  # value only (not applied)
        scheduler.step()
        steps.append(row)
    model.eval()
    with torch.no_grad():
        eval_logits = model(*args)[0]
    trained = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    projected = {n for n, p in trained.items() if n in LOW_RANK or (p.dim() >= 2 and p.numel() > PROJECT_ABOVE)}
    final = {n: p.float() for n, p in trained.items() if n not in projected}
    probes = {str(n): _short(torch.randn(2, n, generator=g)) for n in sorted({trained[n][0].numel() for n in projected})}
    projections = {n: trained[n].reshape(trained[n].shape[0], -1) @ probes[str(trained[n][0].numel())].t() for n in sorted(projected)}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers() if "running" in n}
    return {"seed": seed, "inputs": inputs, "init": init, "train": TRAIN, "steps": steps, "eval_logits": eval_logits,
            "final": final, "probes": probes, "projections": projections, "buffers": buffers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, default=ROOT.parent / "shared" / "official" / "TomorrowJW-SPP-SCL")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "parity" / "sppscl.json")
    args = parser.parse_args()
    for seed in range(50):  # the first seed whose three steps take both branches of Algorithm 1's condition
        fixture = run_official(args.official, seed)
        decisions = {bool(s["run"]) for s in fixture["steps"]}
        if decisions == {True, False}:
            break
    else:
        raise SystemExit("no seed in 0..49 exercises both branches of the condition")
    fixture["init"]["weights"] = {k: v for k, v in fixture["init"]["weights"].items() if k not in LOW_RANK}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_numbers(fixture, args.out)
    torch.set_default_dtype(torch.float32)
    print(f"{args.out}: seed {fixture['seed']}, decisions {[bool(s['run']) for s in fixture['steps']]}, "
          f"{args.out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
