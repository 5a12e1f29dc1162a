"""The problems on which the implicit hypergradient is compared with the unrolled oracle (oracle.py) at
the recipe's own η1, H, K (issue 27): shared by tests/papers/cmcs/test_cmcs_oracle.py and
benchmarks/cmcs_hypergrad_agreement.py.

- `head_case`: CMCS's two classifiers f_t, f_v as d→3 linear heads (d = 768 or 1024) on LayerNorm-scale
  features, text informative, image weakly informative, the lower loss eq 9 with φ = softplus(α·Δε),
  softplus(β·Δε) and per-batch causal effects Δε (detached, as in eqs 7-8).
- `transformer_case`: the same with the text head on the [CLS] state of a small random BERT (2 layers,
  64-d, weights N(0, 0.2²)) whose Hessian at init is strongly indefinite (seed 0: λ̂_max 121, λ̂_min −26;
  the test checks λ_min < −0.05 λ_max).
Each case is taken at random init (`warm=0`) and after `warm` Adam steps (mid-training); the oracle then
runs the H lower steps of Algorithm 1 from there, and the implicit estimate is taken at θ_H on the last
lower batch, as `CMCS.upper_step` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

BATCH = 32


@dataclass
class Case:
    theta: dict[str, torch.Tensor]
    phi: torch.Tensor
    lower_loss: Callable  # (θ, φ, batch) -> eq 9 on one batch
    dev_loss: Callable  # θ -> eq 10 on the dev batch, its φ_b held at the unperturbed φ (no direct term, eq 13)
    batches: list  # the H lower batches, in order


def _labels_and_effects(g, n_batches):
    labels = torch.randint(0, 3, (n_batches * BATCH,), generator=g)
    effects = 0.7 + 0.8 * torch.rand(n_batches, 2, generator=g)  # Δε_t, Δε_v per batch, around 1
    return labels, effects


def _make_case(theta, losses, batches, dev_batch, warm: int, seed: int) -> Case:
    phi = torch.tensor([1.0, 1.0])

    def lower(th, p, b):
        lt, lv = losses(th, b)
        return F.softplus(p[0] * b["effect"][0]) * lt + F.softplus(p[1] * b["effect"][1]) * lv  # eq (9)

    dev_w = F.softplus(phi * dev_batch["effect"])

    def dev(th):
        lt, lv = losses(th, dev_batch)
        return dev_w[0] * lt + dev_w[1] * lv  # eq (10)

    if warm:  # a mid-training state: Adam on the lower loss over the same batches, cycled
        th = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
        opt = torch.optim.Adam(th.values(), lr=1e-3)
        for s in range(warm):
            opt.zero_grad()
            lower(th, phi, batches[(s * 7 + seed) % len(batches)]).backward()
            opt.step()
        theta = {k: v.detach() for k, v in th.items()}
    return Case(theta, phi, lower, dev, batches)


def head_case(seed: int, d: int = 1024, h: int = 10, warm: int = 0, image_signal: float = 0.5) -> Case:
    g = torch.Generator().manual_seed(seed)
    labels, effects = _labels_and_effects(g, h + 1)
    mt, mv = torch.randn(3, d, generator=g), torch.randn(3, d, generator=g)
    xt = F.layer_norm(torch.randn(len(labels), d, generator=g) + 1.5 * mt[labels], (d,))
    xv = F.layer_norm(torch.randn(len(labels), d, generator=g) + image_signal * mv[labels], (d,))
    batches = [{"xt": xt[i * BATCH:(i + 1) * BATCH], "xv": xv[i * BATCH:(i + 1) * BATCH],
                "y": labels[i * BATCH:(i + 1) * BATCH], "effect": effects[i]} for i in range(h + 1)]
    theta = {"wt": torch.randn(3, d, generator=g) / d ** 0.5, "bt": torch.zeros(3),
             "wv": torch.randn(3, d, generator=g) / d ** 0.5, "bv": torch.zeros(3)}

    def losses(th, b):
        lt = F.cross_entropy(b["xt"] @ th["wt"].T + th["bt"], b["y"])  # eq (3)
        lv = F.binary_cross_entropy_with_logits(b["xv"] @ th["wv"].T + th["bv"], F.one_hot(b["y"], 3).to(xv.dtype))  # eq (6)
        return lt, lv

    return _make_case(theta, losses, batches[:h], batches[h], warm, seed)


def tiny_bert(seed: int, hidden: int = 64, layers: int = 2, vocab: int = 60):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=2 * hidden, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, attn_implementation="eager",  # eager: double backward
                        initializer_range=0.2)  # 10× BERT's: strongly indefinite at init (λ_min ≈ −0.2 λ_max measured)
    return BertModel(config, add_pooling_layer=False).to(torch.get_default_dtype()).eval()


def transformer_case(seed: int, h: int = 10, warm: int = 0, seq: int = 8, d_image: int = 64) -> Case:
    from torch.func import functional_call

    g = torch.Generator().manual_seed(seed)
    labels, effects = _labels_and_effects(g, h + 1)
    bert = tiny_bert(seed)
    hidden, vocab = bert.config.hidden_size, bert.config.vocab_size
    # text: one label-specific token among random ones carries the label; image: weakly informative features
    ids = torch.randint(4, vocab, (len(labels), seq), generator=g)
    ids[:, 1 + torch.randint(0, seq - 1, (1,), generator=g)] = labels[:, None] + 1
    mv = torch.randn(3, d_image, generator=g)
    xv = F.layer_norm(torch.randn(len(labels), d_image, generator=g) + 0.5 * mv[labels], (d_image,))
    batches = [{"ids": ids[i * BATCH:(i + 1) * BATCH], "xv": xv[i * BATCH:(i + 1) * BATCH],
                "y": labels[i * BATCH:(i + 1) * BATCH], "effect": effects[i]} for i in range(h + 1)]
    theta = {f"bert.{k}": v.detach().clone() for k, v in bert.named_parameters()}
    theta.update(wt=torch.randn(3, hidden, generator=g) / hidden ** 0.5, bt=torch.zeros(3),
                 wv=torch.randn(3, d_image, generator=g) / d_image ** 0.5, bv=torch.zeros(3))

    def losses(th, b):
        enc = {k[5:]: v for k, v in th.items() if k.startswith("bert.")}
        cls = functional_call(bert, enc, (b["ids"],)).last_hidden_state[:, 0]
        lt = F.cross_entropy(cls @ th["wt"].T + th["bt"], b["y"])  # eq (3)
        lv = F.binary_cross_entropy_with_logits(b["xv"] @ th["wv"].T + th["bv"], F.one_hot(b["y"], 3).to(xv.dtype))  # eq (6)
        return lt, lv

    return _make_case(theta, losses, batches[:h], batches[h], warm, seed)
