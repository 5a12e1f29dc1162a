"""ITM equations against hand/brute-force references: IoU soft labels (§4.3), L_RE (eq 3), L_ATT
(eq 6), the gate (eq 4), D (eq 5), Table 4/5 metrics, the ablation switches, the alternation
schedule (which optimiser sees which batch), and each paper-vs-released-code switch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmbench.encoders.tiny import tiny_text_model
from mmbench.papers.itm.method import AUX, MAIN, ITMConfig
from mmbench.papers.itm.model import ITMNetwork, alignment_loss, relevance_loss
from mmbench.papers.itm import metrics


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: oversubscription makes tiny models 20× slower
    yield
    torch.set_num_threads(before)


def tiny(**changes):
    torch.manual_seed(0)
    cfg = ITMConfig(text_encoder="tiny-roberta", region_dim=8, num_regions=10, num_heads=2, ffn_dim=16, **changes)
    return ITMNetwork(tiny_text_model("roberta"), cfg).eval(), cfg


def inputs(batch=3, length=6, regions=10, dim=8):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(6, 60, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, -2:] = 0
    return ids, mask, torch.randn(batch, regions, dim, generator=g).abs()


# -- §4.3 IoU soft labels -----------------------------------------------------------------------
def test_box_iou_hand_cases():
    iou = metrics.box_iou(np.array([[0, 0, 2, 2], [0, 0, 2, 2], [5, 5, 6, 6]]), np.array([[1, 1, 3, 3], [0, 0, 2, 2]]))
    np.testing.assert_allclose(iou, [[1 / 7, 1], [1 / 7, 1], [0, 0]])


def test_alignment_target_threshold_boxes_and_renormalisation():
    proposals = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 6], [20, 20, 30, 30]])  # IoU 1, 0.5, 0.6, 0
    gt = [[0, 0, 10, 10]]
    np.testing.assert_allclose(metrics.alignment_target(proposals, gt, True), [1 / 1.6, 0, 0.6 / 1.6, 0], rtol=1e-6)  # > 0.5
    np.testing.assert_allclose(metrics.alignment_target(proposals, gt, True, inclusive=True), np.array([1, 0.5, 0.6, 0]) / 2.1, rtol=1e-6)
    two = gt + [[20, 20, 30, 30]]
    np.testing.assert_allclose(metrics.alignment_target(proposals, two, True), np.array([1, 0, 0.6, 1]) / 2.6, rtol=1e-6)
    np.testing.assert_allclose(metrics.alignment_target(proposals, two, True, first_box_only=True), [1 / 1.6, 0, 0.6 / 1.6, 0], rtol=1e-6)
    assert not metrics.alignment_target(proposals, gt, False).any()  # unrelated
    assert not metrics.alignment_target(proposals, [], True).any()  # related without a box
    assert not metrics.alignment_target(proposals, [[100, 100, 120, 120]], True).any()  # no proposal passes


# -- losses ---------------------------------------------------------------------------------------
def test_relevance_loss_eq3_and_official_softmax():
    logits, relation = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([1, 0, -1])
    expected = -(math.log(torch.sigmoid(torch.tensor(0.3)).item()) + math.log(1 - torch.sigmoid(torch.tensor(-1.2)).item())) / 2
    assert relevance_loss(logits, relation, "sigmoid").item() == pytest.approx(expected, rel=1e-6)
    two = torch.tensor([[0.1, 0.9], [1.0, -1.0], [0.0, 0.0]])
    assert relevance_loss(two, relation, "softmax2").item() == pytest.approx(F.cross_entropy(two[:2], relation[:2]).item())


def test_alignment_loss_eq6_related_vs_batchmean():
    dist = torch.randn(3, 5, generator=torch.Generator().manual_seed(0)).softmax(-1)
    target = torch.zeros(3, 5)
    target[0] = torch.tensor([0.5, 0.5, 0, 0, 0])
    relation = torch.tensor([1, 1, 0])  # row 1: related without a GT alignment, row 2: unrelated
    kl0 = sum(0.5 * math.log(0.5 / dist[0, j].item()) for j in (0, 1))
    assert alignment_loss(dist, target, relation, "related").item() == pytest.approx(kl0 / 2, rel=1e-5)  # 1/C, C = 2
    assert alignment_loss(dist, target, relation, "batch").item() == pytest.approx(kl0 / 3, rel=1e-5)
    ref = F.kl_div(dist.log(), target, reduction="batchmean")  # released code: KLDivLoss(batchmean)
    assert alignment_loss(dist, target, relation, "batch").item() == pytest.approx(ref.item(), rel=1e-5)


# -- eqs 1-8 ----------------------------------------------------------------------------------------
def _capture(module, store, key):
    return module.register_forward_hook(lambda m, args, out: store.__setitem__(key, (args, out)))


def test_gate_eq4_and_alignment_eq5_against_brute_force():
    model, cfg = tiny()
    seen = {}
    _capture(model.coarse, seen, "coarse")
    _capture(model.fine, seen, "fine")
    ids, mask, regions = inputs()
    with torch.no_grad():
        out = model(ids, mask, regions)
    coarse_out = seen["coarse"][1][0]  # H'_V
    (query, keys, _), _ = seen["fine"]
    torch.testing.assert_close(keys, out["relevance_prob"][:, None, None] * coarse_out)  # eq 4
    torch.testing.assert_close(out["relevance_prob"], torch.sigmoid(model.relevance(coarse_out.max(1).values).squeeze(-1)))  # eq 2
    attn = model.fine.attention  # eq 5: D = mean over heads of softmax(q k^T / sqrt(d_h))
    q = attn.query(query).view(3, 1, 2, -1).transpose(1, 2)
    k = attn.key(keys).view(3, 10, 2, -1).transpose(1, 2)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    torch.testing.assert_close(out["alignment"], logits.softmax(-1).mean(1)[:, 0])
    official, _ = tiny(alignment_distribution="softmax_mean_logits")
    official.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(official(ids, mask, regions)["alignment"], logits.mean(1)[:, 0].softmax(-1))
    assert query.shape == (3, 1, 32) and torch.equal(query, model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, :1])


def test_closed_gate_filters_the_image():
    model, _ = tiny()
    with torch.no_grad():
        model.relevance.bias.fill_(-1e4)  # P(r) = 0 → G = 0 → H''_V = 0: every proposal looks the same
        out = model(*inputs())
    assert out["relevance_prob"].max().item() == 0.0
    torch.testing.assert_close(out["alignment"], torch.full((3, 10), 0.1))


def test_official_heads_and_queries():
    model, _ = tiny(relevance_head="softmax2", fine_query="pooler", classifier_head="pooler")
    seen = {}
    _capture(model.fine, seen, "fine")
    _capture(model.coarse, seen, "coarse")
    ids, mask, regions = inputs()
    with torch.no_grad():
        out = model(ids, mask, regions)
        h0 = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, :1]
    assert out["relevance_logits"].shape == (3, 2)
    torch.testing.assert_close(out["relevance_prob"], out["relevance_logits"].softmax(-1)[:, 1])
    coarse_out = seen["coarse"][1][0]
    per_region = model.relevance_region(coarse_out).squeeze(-1)  # Linear(d→1) then Linear(100→2)
    torch.testing.assert_close(out["relevance_logits"], model.relevance_pair(per_region))
    torch.testing.assert_close(seen["fine"][0][0], torch.tanh(model.query_pooler(h0)))


@pytest.mark.parametrize("coarse, fine", [(False, True), (True, False), (False, False)])
def test_ablation_switches(coarse, fine):
    model, _ = tiny(coarse_matching=coarse, fine_matching=fine)
    seen = {}
    _capture(model.fusion, seen, "fusion")
    ids, mask, regions = inputs()
    with torch.no_grad():
        out = model(ids, mask, regions)
    assert out["logits"].shape == (3, 3)
    assert ("relevance_prob" in out) == coarse and ("alignment" in out) == fine
    assert not hasattr(model, "coarse") if not coarse else not hasattr(model, "fine")
    fused_len = seen["fusion"][0][0].shape[1]
    assert fused_len == ids.shape[1] + (1 if fine else 10)  # [H'_T ⊕ H_T] or [H''_V ⊕ H_T]


# -- Table 4/5 metrics ------------------------------------------------------------------------------
def test_recall_at_k_and_kl_against_brute_force():
    rng = np.random.default_rng(0)
    records, targets, dists = [], [], []
    for _ in range(40):
        a = np.where(rng.random(20) < 0.2, rng.random(20), 0)
        a[rng.integers(20)] += 0.1
        a /= a.sum()
        d = rng.dirichlet(np.ones(20))
        targets.append(a), dists.append(d), records.append(metrics.alignment_example(a, d))
    got = metrics.alignment_metrics(records)
    for k in (1, 3, 5):
        brute = np.mean([np.argmax(a) in sorted(range(20), key=lambda i: -d[i])[:k] for a, d in zip(targets, dists)])
        assert got[f"alignment_r{k}"] == pytest.approx(100 * brute)
    brute_kl = np.mean([sum(a[i] * math.log(a[i] / d[i]) for i in range(20) if a[i] > 0) for a, d in zip(targets, dists)])
    assert got["alignment_kl"] == pytest.approx(brute_kl)
    rel = metrics.relevance_metrics([1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
    assert rel["relevance_accuracy"] == pytest.approx(60.0)
    # class 0: P=1/2 R=1/2; class 1: P=2/3 R=2/3 → macro P = R = F1 = 7/12
    assert rel["relevance_precision"] == pytest.approx(700 / 12) and rel["relevance_f1"] == pytest.approx(700 / 12)


# -- classifier input (eq 8) in every Table 6 variant ----------------------------------------------
def _table6_rows():
    from mmbench.recipes.loader import load_paper

    table = next(t for t in load_paper("itm").tables if t.id == "table6")
    return [pytest.param(row.overrides, id=row.label) for row in table.rows]


@pytest.mark.parametrize("overrides", _table6_rows())
def test_classifier_reads_the_first_text_token_in_every_ablation(overrides):
    """eq 8 classifies H_0, the target input's first token: H'_T (the fine CM-Transformer's output
    for the query <s>) when fine matching exists, else the text's <s> among [H''_V ⊕ H_T], never
    image region 0."""
    changes = {k.removeprefix("model."): v == "true" if v in ("true", "false") else float(v)
               for k, v in (o.split("=") for o in overrides)}
    model, cfg = tiny(**changes)
    seen = {}
    _capture(model.fusion, seen, "fusion")
    if cfg.fine_matching:
        _capture(model.fine, seen, "fine")
    _capture(model.head_dropout, seen, "head")
    ids, mask, regions = inputs()
    with torch.no_grad():
        model(ids, mask, regions)
        text = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    fused_in, fused_out = seen["fusion"][0][0], seen["fusion"][1][0]
    expected_in = seen["fine"][1][0][:, 0] if cfg.fine_matching else text[:, 0]  # H'_T, or H^0_T = <s>
    position = [i for i in range(fused_in.shape[1]) if torch.equal(fused_in[:, i], expected_in)]
    assert len(position) == 1
    torch.testing.assert_close(seen["head"][0][0], fused_out[:, position[0]])
