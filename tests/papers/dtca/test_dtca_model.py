"""DTCA's equations against references: CRF (eqs 10–12) and Viterbi by brute force, fp32 CRF under
bf16 autocast, the Wasserstein loss (eqs 13–21) against `ot.emd2`, IPOT against exact OT, the
cross-attention (eqs 8–9) against a hand-written reference, and the released-code switches."""

from __future__ import annotations

import itertools
import math

import numpy as np
import ot
import pytest
import torch
from torchcrf import CRF

from mmbench.papers.dtca.method import DTCAConfig
from mmbench.papers.dtca.model import CrossModalAttention, DTCAModel, crf_decode, crf_nll
from mmbench.papers.dtca.alignment import cosine_cost, emd_distance, ipot_loss, ipot_plan, nmse_cost, wasserstein_loss

K = 5


def _crf(seed=0):
    torch.manual_seed(seed)
    crf = CRF(K, batch_first=True)
    for p in crf.parameters():
        torch.nn.init.normal_(p, 0, 1)
    return crf


def _path_score(crf, emissions, path):
    """eq (11): Σ A[y_n, y_n+1] + Σ w_{y_n}·p̂_n, with start/end transitions as A[y_0, y_1], A[y_N, y_N+1]."""
    score = crf.start_transitions[path[0]] + crf.end_transitions[path[-1]]
    score = score + sum(emissions[i, t] for i, t in enumerate(path))
    return score + sum(crf.transitions[a, b] for a, b in zip(path, path[1:]))


def test_crf_nll_matches_brute_force_enumeration():
    crf = _crf()
    emissions = torch.randn(2, 4, K)
    tags = torch.tensor([[4, 1, 0, 2], [3, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    expected = []
    for b, length in enumerate(mask.sum(1).tolist()):
        e = emissions[b, :length]
        scores = torch.stack([_path_score(crf, e, p) for p in itertools.product(range(K), repeat=length)])
        expected.append(torch.logsumexp(scores, 0) - _path_score(crf, e, tags[b, :length].tolist()))  # eqs (10), (12)
    got = crf_nll(crf, emissions, tags, mask, "mean")
    assert got.item() == pytest.approx(torch.stack(expected).mean().item(), abs=1e-4)
    official = crf_nll(crf, emissions, tags, mask, "sum_div10")
    assert official.item() == pytest.approx(torch.stack(expected).sum().item() / 10, abs=1e-4)


def test_viterbi_matches_brute_force_argmax():
    crf = _crf(1)
    emissions = torch.randn(3, 5, K)
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] + [0] * 4], dtype=torch.bool)
    decoded = crf_decode(crf, emissions, mask)
    for b, length in enumerate(mask.sum(1).tolist()):
        best = max(itertools.product(range(K), repeat=length), key=lambda p: _path_score(crf, emissions[b, :length], p).item())
        assert decoded[b] == list(best)


def test_crf_runs_in_fp32_under_bf16_autocast():
    crf = _crf(2)
    emissions = torch.randn(2, 6, K)
    tags = torch.randint(0, K, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.bool)
    reference = crf_nll(crf, emissions, tags, mask, "mean")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = crf_nll(crf, emissions.to(torch.bfloat16), tags, mask, "mean")
        decoded = crf_decode(crf, emissions, mask)
    assert under.dtype == torch.float32
    # the bf16 input itself is rounded; the CRF math on it must be fp32-exact
    assert under.item() == pytest.approx(crf_nll(crf, emissions.to(torch.bfloat16).float(), tags, mask, "mean").item(), abs=1e-4)
    assert abs(under.item() - reference.item()) < 0.1
    assert decoded == crf_decode(crf, emissions, mask)


def test_nmse_cost_is_eq15():
    t, v = torch.randn(3, 8), torch.randn(4, 8)
    expected = torch.tensor([[((t[n] / t[n].norm() ** 2 - v[m] / v[m].norm() ** 2) ** 2).mean().item() for m in range(4)] for n in range(3)])
    assert torch.allclose(nmse_cost(t, v), expected, atol=1e-6)
    unit = torch.tensor([[((t[n] / t[n].norm() - v[m] / v[m].norm()) ** 2).mean().item() for m in range(4)] for n in range(3)])
    assert torch.allclose(nmse_cost(t, v, power=1), unit, atol=1e-6)


def test_wasserstein_loss_matches_ot_emd2_and_reaches_both_encoders():
    torch.manual_seed(0)
    text = torch.randn(2, 7, 6, dtype=torch.float64, requires_grad=True)
    image = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[0, 1:6] = True
    mask[1, 1:4] = True
    loss = wasserstein_loss(text, image, mask, cost="nmse_unit")
    expected = []
    for b in range(2):
        cost = nmse_cost(text[b][mask[b]], image[b], power=1)
        n, m = cost.shape
        expected.append(ot.emd2(torch.full((n,), 1.0 / n, dtype=torch.float64), torch.full((m,), 1.0 / m, dtype=torch.float64), cost))
    expected = torch.stack(expected).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)
    grad_text, grad_image = torch.autograd.grad(loss, (text, image))
    ref_text, ref_image = torch.autograd.grad(expected, (text, image))
    assert torch.allclose(grad_text, ref_text, atol=1e-10) and torch.allclose(grad_image, ref_image, atol=1e-10)
    assert grad_text[mask].abs().sum() > 0 and grad_image.abs().sum() > 0
    assert grad_text[~mask].abs().sum() == 0  # <s>, </s> and padding take no part


def test_emd_distance_equals_brute_force_assignment():
    """With N = M and uniform masses the optimal flow is a permutation (Birkhoff): check all of them."""
    cost = torch.rand(4, 4, dtype=torch.float64)
    best = min(sum(cost[i, p[i]].item() for i in range(4)) / 4 for p in itertools.permutations(range(4)))
    assert emd_distance(cost).item() == pytest.approx(best, rel=1e-9)


def test_ipot_converges_to_exact_ot_and_respects_masks():
    torch.manual_seed(1)
    text, image = torch.randn(1, 6, 8, dtype=torch.float64), torch.randn(1, 5, 8, dtype=torch.float64)
    mask = torch.tensor([[False, True, True, True, True, False]])
    exact = ot.emd2(np.full(4, 0.25), np.full(5, 0.2), cosine_cost(text[0, 1:5], image[0]).numpy())
    approx = ipot_loss(text, image, mask, beta=0.1, iterations=2000)
    assert approx.item() == pytest.approx(exact, abs=1e-4)
    plan = ipot_plan(cosine_cost(text, image), mask, torch.ones(1, 5, dtype=torch.bool), 0.5, 200)
    assert plan[0, ~mask[0]].abs().sum() == 0
    assert torch.allclose(plan[0].sum(0), torch.full((5,), 0.2, dtype=torch.float64), atol=1e-3)  # image marginal
    # released code's inverted mask with no padding: no token takes part, distance 0
    assert ipot_loss(text, image, torch.zeros(1, 6, dtype=torch.bool)).item() == 0.0


def test_cross_attention_matches_reference_eq8_eq9():
    torch.manual_seed(0)
    block = CrossModalAttention(dim=8, heads=2, head_dim=None, bias=True, ffn=True, ffn_dim=16, dropout=0.0, official_init=False).eval()
    text, image = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    q, k, v = block.query(text), block.key(image), block.value(image)
    heads = []
    for u in range(2):  # eq (8) per head, d_h/u = 4
        s = slice(4 * u, 4 * u + 4)
        heads.append(torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(4), -1) @ v[..., s])
    p_bar = block.out(torch.cat(heads, -1))  # eq (9)
    hidden = block.norm1(text + p_bar)
    expected = block.norm2(hidden + block.ffn(hidden))
    assert torch.allclose(block(text, image), expected, atol=1e-6)
    # equals torch's multi-head attention with the same weights
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([block.query.weight, block.key.weight, block.value.weight]))
        mha.in_proj_bias.copy_(torch.cat([block.query.bias, block.key.bias, block.value.bias]))
        mha.out_proj.weight.copy_(block.out.weight)
        mha.out_proj.bias.copy_(block.out.bias)
    assert torch.allclose(mha(text, image, image, need_weights=False)[0], p_bar, atol=1e-6)


def test_official_cross_attention_shape_and_no_ffn():
    block = CrossModalAttention(dim=8, heads=8, head_dim=8, bias=False, ffn=False, ffn_dim=None, dropout=0.0, official_init=True)
    assert block.query.weight.shape == (64, 8) and block.query.bias is None and block.ffn is None
    text = torch.randn(1, 3, 8)
    assert block(text, torch.randn(1, 4, 8)).shape == (1, 3, 8)


class _Encoder(torch.nn.Module):
    """A stand-in text/image encoder returning fixed states (so the head logic is tested alone)."""

    def __init__(self, states):
        super().__init__()
        self.states = torch.nn.Parameter(states)
        self.config = type("C", (), {"hidden_size": states.shape[-1]})()

    def forward(self, **_):
        return type("O", (), {"last_hidden_state": self.states})()


def _batch():
    token_labels = torch.full((2, 6), -100)
    token_labels[0, [1, 3]] = torch.tensor([4, 0])
    token_labels[1, [1]] = torch.tensor([2])
    return {"input_ids": torch.zeros(2, 6, dtype=torch.long), "attention_mask": torch.tensor([[1] * 5 + [0], [1] * 3 + [0] * 3]),
            "token_labels": token_labels, "word_index": torch.tensor([[1, 3], [1, 0]]), "word_tags": torch.tensor([[4, 0], [2, 0]]),
            "word_mask": torch.tensor([[True, True], [True, False]]), "ot_text_mask": torch.tensor([[0, 1, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0]]).bool(),
            "pixel_values": torch.zeros(2, 3, 4, 4)}


def test_joint_loss_is_eq22_and_switches_change_it():
    torch.manual_seed(0)
    config = DTCAConfig(alpha=0.3, beta=0.9, ot_cost="nmse_unit", dropout=0.0)
    model = DTCAModel(config, _Encoder(torch.randn(2, 6, 8)), _Encoder(torch.randn(2, 5, 8)), 8, prefix_tokens=1)
    batch = _batch()
    terms = model(batch)
    assert terms["loss"].item() == pytest.approx((terms["crf_loss"] + 0.3 * terms["text_loss"] + 0.9 * terms["ot_loss"]).item(), rel=1e-6)
    # the patches exclude the [CLS]: 4 image tokens reach the OT
    assert model.encode(batch)["image"].shape[1] == 4
    model.config = DTCAConfig(image_tokens="all")  # released code: the [CLS] too
    assert model.encode(batch)["image"].shape[1] == 5
    # released-code CRF: raw positions, non-contiguous mask incl. position 0, summed / 10 — as torchcrf computes it
    model.config = DTCAConfig(alpha=0.3, beta=0.9, crf_mask="noncontiguous", crf_reduction="sum_div10", dropout=0.0)
    logits = model.encode(batch)["cross_logits"]
    mask = batch["token_labels"] != -100
    mask[:, 0] = True
    expected = -model.crf(logits, batch["token_labels"].clamp_min(0), mask=mask, reduction="sum") / 10
    assert model.crf_loss(logits, batch).item() == pytest.approx(expected.item(), rel=1e-6)
    # argmax decoding reads the emission scores at the first sub-tokens
    model.config = DTCAConfig(decode="argmax", dropout=0.0)
    tags = model.decode(batch)["tags"]
    first = logits.gather(1, batch["word_index"].unsqueeze(-1).expand(-1, -1, 5)).argmax(-1)
    assert tags == [first[0].tolist(), first[1, :1].tolist()]


def test_prefix_tokens_come_from_the_encoder_output_not_its_name():
    """facebook/deit-base-patch16-224 is a ViT checkpoint (one [CLS]); a distilled DeiT has two prefix
    tokens; Swin's last-stage grid has none. Counted as sequence length − patch grid."""
    from transformers import DeiTConfig, DeiTModel, SwinConfig, SwinModel, ViTConfig, ViTModel

    from mmbench.papers.dtca.encoders import prefix_tokens

    common = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=8)
    assert prefix_tokens(ViTModel(ViTConfig(**common), add_pooling_layer=False), 32) == 1
    assert prefix_tokens(DeiTModel(DeiTConfig(**common), add_pooling_layer=False), 32) == 2
    swin = SwinModel(SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4))
    assert prefix_tokens(swin, 32) == 0  # 8×8 patches merged once: a 4×4 grid, all patches
    vit = ViTModel(ViTConfig(**common, hidden_dropout_prob=0.5)).train()
    state = torch.get_rng_state()
    prefix_tokens(vit, 32)
    assert torch.equal(state, torch.get_rng_state()) and vit.training  # no dropout draws, mode restored


def test_official_metrics_gold_as_set_and_text_head_at_its_own_best_epoch():
    from mmbench.papers.dtca.method import DTCA

    method = DTCA.__new__(DTCA)
    method.config, method.truncated = DTCAConfig(gold_as_set=True, text_metrics_epoch="own_best"), {}
    gold = [[0, 0, 2], [0, 0, 2], [3, 4, 1]]  # an aspect annotated twice: counted once, as cal_f1 does

    def epoch(text_pred):
        return method.metrics([{"gold": gold, "pred": [[0, 0, 2]], "text_pred": text_pred}], "test")

    good, bad = epoch([[0, 0, 2], [3, 4, 1]]), epoch([])
    assert good["gold_aspects"] == 2 and good["recall"] == 50.0
    assert good["text_f1"] == good["text_best_f1"] == 100.0
    assert bad["text_f1"] == 0.0 and bad["text_best_f1"] == 100.0  # the released text_best_metric keeps its best
    method.config = DTCAConfig()  # paper variant: every gold item counts, no running best
    assert epoch([])["gold_aspects"] == 3 and "text_best_f1" not in epoch([])


def test_image_pretrained_false_keeps_the_architecture_at_random_init(tmp_path):
    """The released Figure-5 DeiT row loads no weights (checkpoint keys never match "deit.…"):
    `model.image_pretrained=false` builds the checkpoint's architecture and processor at random init."""
    from transformers import DeiTConfig, DeiTModel, ViTImageProcessor

    from mmbench.papers.dtca.encoders import load_image

    source = tmp_path / "deit-small-checkpoint"
    torch.manual_seed(0)
    saved = DeiTModel(DeiTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                 image_size=32, patch_size=8), add_pooling_layer=False)
    with torch.no_grad():
        saved.embeddings.patch_embeddings.projection.weight.fill_(0.5)  # unlike any random init
    saved.save_pretrained(source)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(source)
    loaded, random_init = load_image(str(source)), load_image(str(source), pretrained=False)
    weight = lambda enc: enc.model.embeddings.patch_embeddings.projection.weight  # noqa: E731
    assert torch.all(weight(loaded) == 0.5) and not torch.any(weight(random_init) == 0.5)
    assert random_init.model.config.to_dict() == loaded.model.config.to_dict() and random_init.prefix_tokens == loaded.prefix_tokens == 2
    assert {n for n, _ in random_init.model.named_parameters()} == {n for n, _ in loaded.model.named_parameters()}
