"""CMCS equations one by one against hand computations (eqs 1-2/4-5, 3, 6, 7-8, φ, 9, 15) and the
eq-6 image-level multi-hot target, on synthetic and on the real Twitter-2015 rows."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mmbench.papers.cmcs.method import image_targets
from mmbench.papers.cmcs.model import (CausalScheduler, FeatureSelector, causal_effect, fuse_predictions,
                                        image_loss, scheduled_loss, text_loss)
from tests.conftest import real_path


def test_masks_are_strictly_inside_zero_one_and_eq2_by_hand():
    torch.manual_seed(0)
    sel = FeatureSelector(8, dropout=0.0).eval()
    e = torch.randn(5, 8) * 50  # large inputs: a sigmoid mask must still be strictly in (0, 1)
    cf, mask = sel(e)
    assert mask.shape == e.shape and bool(((mask > 0) & (mask < 1)).all())
    assert torch.allclose(mask, torch.sigmoid(sel.mask_mlp(e)))  # eq (1)
    selected = mask * e
    assert torch.allclose(cf, sel.outer_mlp(selected + sel.inner_mlp(selected)))  # eq (2)


def test_fixed_mask_is_constant_half_and_mask_mlp_gets_no_gradient():
    sel = FeatureSelector(4, dropout=0.0, fixed_mask=0.5)
    e = torch.randn(3, 4)
    cf, mask = sel(e)
    assert torch.equal(mask, torch.full_like(e, 0.5))
    cf.sum().backward()
    assert all(p.grad is None for p in sel.mask_mlp.parameters())
    assert all(p.grad is not None for p in sel.outer_mlp.parameters())


def test_losses_eq3_eq6():
    logits, labels = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]), torch.tensor([0, 2])
    by_hand = -(F.log_softmax(logits, -1)[0, 0] + F.log_softmax(logits, -1)[1, 2]) / 2
    assert torch.isclose(text_loss(logits, labels), by_hand)
    target = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    p = torch.sigmoid(logits)
    bce = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    assert torch.isclose(image_loss(logits, target), bce)


def test_causal_effect_eq7_eq8():
    lo, lc = torch.tensor(1.3, requires_grad=True), torch.tensor(0.4, requires_grad=True)
    effect = causal_effect(lo, lc)
    assert math.isclose(float(effect), math.exp(0.9), rel_tol=1e-6)
    assert not effect.requires_grad  # a weight: no gradient flows into θ through Δε (eq 12)
    assert float(causal_effect(torch.tensor(0.2), torch.tensor(0.7))) < 1  # features that hurt: Δε < 1
    assert math.isclose(float(causal_effect(torch.tensor(50.0), torch.tensor(0.0), clamp=10.0)), math.exp(10), rel_tol=1e-6)


def test_softplus_scheduling_weights_and_their_alpha_gradient():
    sched = CausalScheduler(init_alpha=0.7, init_beta=-0.3)
    dt, dv = torch.tensor(1.5), torch.tensor(0.8)
    wt, wv = sched(dt, dv)
    assert math.isclose(wt.item(), math.log1p(math.exp(0.7 * 1.5)), rel_tol=1e-6)
    assert math.isclose(wv.item(), math.log1p(math.exp(-0.3 * 0.8)), rel_tol=1e-6)
    wt.backward()
    # d softplus(αΔε)/dα = Δε · sigmoid(αΔε)
    assert math.isclose(float(sched.alpha.grad), 1.5 / (1 + math.exp(-0.7 * 1.5)), rel_tol=1e-6)
    assert sched.beta.grad is None


def test_scheduled_loss_eq9():
    assert float(scheduled_loss(torch.tensor(2.0), torch.tensor(0.5), torch.tensor(3.0), torch.tensor(0.25))) == 1.75
    assert float(scheduled_loss(torch.tensor(2.0), torch.tensor(0.5))) == 1.0  # w/o visual: text term only


def test_fusion_eq15():
    text = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    image = torch.tensor([[0.1, 0.1, 0.9], [0.9, 0.2, 0.1]])
    sim = torch.tensor([0.25, -0.4])
    fused = fuse_predictions(text, image, sim)
    assert torch.allclose(fused[0], 0.75 * text[0] + 0.25 * image[0])
    assert torch.allclose(fused[1], text[1])  # a negative cosine is clamped to θ = 0
    assert torch.allclose(fuse_predictions(text, image, torch.tensor([1.7, 1.0])), image)


def test_image_targets_multi_hot_groups_by_image_and_tweet():
    rows = [
        {"image_id": "a.jpg", "sentence": "$T$ met Bob", "target": "Ann", "label": 1},
        {"image_id": "a.jpg", "sentence": "Ann met $T$", "target": "Bob", "label": 2},
        {"image_id": "a.jpg", "sentence": "$T$ lost", "target": "Cy", "label": 0},  # same image, other tweet
        {"image_id": "b.jpg", "sentence": "$T$ met Bob", "target": "Ann", "label": 0},  # same tweet, other image
    ]
    assert image_targets(rows) == [[0, 1, 1], [0, 1, 1], [1, 0, 0], [1, 0, 0]]


def test_image_targets_on_real_twitter2015_train():
    from mmbench.data.formats.tombert import read_split

    rows, _ = read_split(real_path("TomBERT", "absa_data", "twitter2015"), "train")
    targets = image_targets(rows)
    assert len(targets) == 3179
    assert all(t[r["label"]] == 1.0 for t, r in zip(targets, rows))  # a row's own label is always on
    multi = sum(sum(t) > 1 for t in targets)
    tweets = {(r["image_id"], r["sentence"].replace("$T$", r["target"])) for r in rows}
    assert len(tweets) < 3179 and multi > 0
    print(f"twitter2015 train: {len(tweets)} image-tweet groups, {multi} rows with a multi-label image target")


def test_tiny_clip_pools_the_end_of_text_token():
    """CLIP's text tower pools the first end-of-text token; the tiny preset ends with [SEP]."""
    from mmbench.papers.cmcs.clip import tiny_clip

    model, processor, tokenizer = tiny_clip()
    enc = tokenizer(["alice is amazing", "bob"], padding=True, return_tensors="pt")
    out = model.text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    sep = (enc["input_ids"] == tokenizer.sep_token_id).int().argmax(-1)
    assert torch.equal(out.pooler_output, out.last_hidden_state[torch.arange(2), sep])
    assert int(sep[1]) == 2  # [CLS] bob [SEP]
