"""SPP-SCL equations against direct (loop) reference computations: eqs (2)-(6), Algorithm 1's
condition, eq (7) and Figure 4's distances."""

import math

import pytest
import torch

from mmbench.papers.sppscl.losses import (
    alignment_check,
    inter_supcon,
    inter_supcon_logits,
    intra_supcon,
    needs_inter_step,
    sentiment_distances,
    total_loss,
)
from mmbench.papers.sppscl.model import CrossModalFusion, HierarchicalAttentionText


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def cos(a, b):
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def ref_intra(x, y, tau, normaliser, self_in_den):
    """Eq (4) written as loops (paper: 1/B and k ≠ i; released code: 1/|P(i)| and exp(0) for k = i)."""
    n = len(y)
    total = 0.0
    for i in range(n):
        den = sum(math.exp(cos(x[i], x[k]) / tau) for k in range(n) if k != i) + (1.0 if self_in_den else 0.0)
        terms = [math.log(math.exp(cos(x[i], x[j]) / tau) / den) for j in range(n) if j != i and y[j] == y[i]]
        norm = n if normaliser == "batch" else max(1, len(terms))
        total += sum(terms) / norm
    return -total / n


def ref_inter(a, b, y, tau, normaliser, pair):
    """Eq (6) as loops: anchors a_m, contrasts b_n, denominator over every t (but t = m when the pair is excluded)."""
    n = len(y)
    total = 0.0
    for m in range(n):
        den = sum(math.exp(cos(a[m], b[t]) / tau) for t in range(n) if pair != "excluded" or t != m)
        terms = [math.log(math.exp(cos(a[m], b[k]) / tau) / den) for k in range(n)
                 if y[k] == y[m] and (pair == "positive" or k != m)]
        norm = n if normaliser == "batch" else max(1, len(terms))
        total += sum(terms) / norm
    return -total / n


def released_code_closs(x, y, tau=0.07):
    """The released CLoss as described in official-code.md §4f (diag set to 0, row max subtracted, clamp)."""
    z = torch.nn.functional.normalize(x, dim=1)
    n = len(y)
    eye = torch.eye(n)
    logits = (z @ z.t() / tau) * (1 - eye)
    logits = logits - logits.max(1, keepdim=True).values
    positives = (y[:, None] == y[None, :]).float() * (1 - eye)
    log_prob = logits * positives - torch.log(torch.exp(logits).sum(1, keepdim=True))
    mean_pos = (positives * log_prob).sum(1) / positives.sum(1).clamp(min=1)
    return -mean_pos.mean()


def khosla_supcon_out(x, y, tau):
    """Khosla et al.'s L_out^sup (the SupCon reference loss): positives-normalised, self excluded."""
    return ref_intra(x, y, tau, "positives", False)


@pytest.mark.parametrize("normaliser,self_in_den", [("batch", False), ("positives", True), ("positives", False)])
def test_intra_supcon_matches_loop_reference(normaliser, self_in_den):
    x, y = torch.randn(7, 5), torch.tensor([0, 1, 0, 2, 1, 0, 2])
    got = intra_supcon(x, y, 0.5, normaliser, self_in_den)
    assert got.item() == pytest.approx(ref_intra(x, y, 0.5, normaliser, self_in_den), rel=1e-5)


def test_intra_supcon_official_matches_released_code_and_khosla():
    x, y = torch.randn(8, 6), torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])
    official = intra_supcon(x, y, 0.07, "positives", True)
    assert official.item() == pytest.approx(released_code_closs(x, y).item(), rel=1e-5)
    paper_khosla = intra_supcon(x, y, 0.3, "positives", False)
    assert paper_khosla.item() == pytest.approx(khosla_supcon_out(x, y, 0.3), rel=1e-5)
    # the variants really differ
    assert abs(intra_supcon(x, y, 0.3, "batch", False).item() - paper_khosla.item()) > 1e-3


@pytest.mark.parametrize("anchor", ["image", "text"])
@pytest.mark.parametrize("pair,normaliser", [("negative", "batch"), ("positive", "positives"), ("excluded", "positives"),
                                             ("positive", "batch")])
def test_inter_supcon_matches_loop_reference(anchor, pair, normaliser):
    image, text, y = torch.randn(6, 4), torch.randn(6, 4), torch.tensor([1, 0, 1, 1, 0, 2])
    got = inter_supcon(image, text, y, 0.2, normaliser, pair, anchor)
    a, b = (image, text) if anchor == "image" else (text, image)
    assert got.item() == pytest.approx(ref_inter(a, b, y, 0.2, normaliser, pair), rel=1e-5)


@pytest.mark.parametrize("pair,sign", [("positive", -1), ("excluded", 0), ("negative", 1)])
def test_inter_supcon_gradient_on_the_matched_pair(pair, sign):
    """∂L_clm/∂s(m, m) while the pair is no more similar than the anchor's other positives: a descent step raises
    the matched pair's similarity (positive), leaves it (excluded), or lowers it (eq 6 as printed, which keeps
    the pair only in the denominator; this sign holds at any similarity)."""
    g = torch.Generator().manual_seed(3)
    logits = (0.5 * torch.randn(8, 8, generator=g)).requires_grad_(True)
    y = torch.tensor([0, 1, 0, 2, 1, 0, 2, 1])
    inter_supcon_logits(logits, y, "positives", pair).backward()
    diag = torch.diagonal(logits.grad)
    if sign == 0:
        assert torch.all(diag == 0)
    else:
        assert torch.all(torch.sign(diag) == sign)


@pytest.mark.parametrize("pair", ["positive", "negative"])
def test_inter_step_moves_matched_pairs(pair):
    """On embeddings (D = 32, B = 64), gradient steps on L_clm raise the matched image-text pairs' mean cosine
    similarity when the pair counts as a positive; as printed (the pair only in the denominator) they lower it."""
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    image.requires_grad_(True), text.requires_grad_(True)

    def matched():
        with torch.no_grad():
            return float(torch.nn.functional.cosine_similarity(image, text, dim=1).mean())

    before = matched()
    opt = torch.optim.SGD([image, text], lr=1.0)
    for _ in range(20):
        opt.zero_grad()
        inter_supcon(image, text, y, 0.07, "positives", pair).backward()
        opt.step()
    change = matched() - before  # measured: +0.0065 (positive), -0.0068 (negative)
    assert change > 0.004 if pair == "positive" else change < -0.004


def test_inter_anchor_direction_matters():
    image, text, y = torch.randn(6, 4), torch.randn(6, 4), torch.tensor([1, 0, 1, 1, 0, 2])
    assert abs(inter_supcon(image, text, y, anchor="image").item() - inter_supcon(image, text, y, anchor="text").item()) > 1e-4


def test_supcon_gradient_pulls_same_label_together():
    x = torch.randn(6, 3, requires_grad=True)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    opt = torch.optim.SGD([x], lr=2.0)
    for _ in range(200):
        opt.zero_grad()
        intra_supcon(x, y, 0.5, "batch").backward()
        opt.step()
    z = torch.nn.functional.normalize(x.detach(), dim=1)
    sim = z @ z.t()
    assert sim[:3, :3].mean() > 0.8 and sim[:3, 3:].mean() < 0.0


def ref_condition(image, text, y, alpha, similarity, count_self, floor):
    n = len(y)
    if similarity == "cosine":
        s = [[cos(image[i], text[j]) for j in range(n)] for i in range(n)]
    else:
        s = [[1 / (1 + math.exp(-float(torch.dot(text[i], image[j])))) for j in range(n)] for i in range(n)]
    d = sum(s[i][i] for i in range(n)) / n
    c = sum(s[i][j] < d for i in range(n) for j in range(n))
    m = sum(y[i] == y[j] and (count_self or i != j) for i in range(n) for j in range(n))
    return c < (int(alpha * m) if floor else alpha * m)


@pytest.mark.parametrize("similarity,count_self,floor", [("cosine", False, False), ("sigmoid_dot", True, True),
                                                        ("sigmoid_dot", False, False)])
def test_two_step_condition_matches_algorithm_1(similarity, count_self, floor):
    hits = 0
    for seed in range(30):
        g = torch.Generator().manual_seed(seed)
        image, text = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
        y = torch.randint(0, 2, (6,), generator=g)
        for alpha in (1 / 3, 2 / 3, 1.0):
            got = needs_inter_step(image, text, y, alpha, similarity, count_self, floor)
            assert got == ref_condition(image, text, y, alpha, similarity, count_self, floor)
            hits += got
    assert 0 < hits < 90  # both branches are exercised


def test_condition_aligned_pairs_skip_and_misaligned_run():
    image = torch.eye(4)
    y = torch.tensor([0, 0, 1, 1])
    # text == image: the diagonal is 1 and the 12 off-diagonal entries (0) lie below it: c = 12 ≥ α·m = 4/3 → skip
    assert not needs_inter_step(image, image.clone(), y, 2 / 3, "cosine")
    # pairs rolled out of place: the diagonal is the minimum (0), nothing lies below it, c = 0 < α·m → L_clm runs
    assert needs_inter_step(image, torch.roll(image, 1, 0), y, 2 / 3, "cosine")
    assert needs_inter_step(image, torch.roll(image, 1, 0), y, 2 / 3, "cosine") == ref_condition(
        image, torch.roll(image, 1, 0), y, 2 / 3, "cosine", False, False)


def test_condition_floor_changes_threshold():
    image, text, y = torch.randn(5, 3), torch.randn(5, 3), torch.tensor([0, 0, 1, 1, 1])
    sim = torch.nn.functional.normalize(image, dim=1) @ torch.nn.functional.normalize(text, dim=1).t()
    c = int((sim < torch.diagonal(sim).mean()).sum())
    m = 8  # same-label pairs with i != j
    alpha = (c + 0.5) / m  # α·m = c + 0.5: c < α·m runs L_clm, but int(α·m) = c does not
    assert needs_inter_step(image, text, y, alpha, "cosine")
    assert not needs_inter_step(image, text, y, alpha, "cosine", floor=True)
    check = alignment_check(image, text, y, alpha, "cosine")
    assert check["count"] == c and check["threshold"] == pytest.approx(c + 0.5)


def test_total_loss_eq7():
    ce, a, b, c = (torch.tensor(v) for v in (0.5, 1.0, 2.0, 3.0))
    assert total_loss(ce, 5.0, a, b, c).item() == pytest.approx(8.5)
    assert total_loss(ce, 10.0).item() == pytest.approx(5.0)


def test_distances_brute_force():
    image, text, y = torch.randn(5, 3), torch.randn(5, 3), torch.tensor([0, 1, 0, 0, 1])
    got = sentiment_distances(image, text, y)
    i, t = torch.nn.functional.normalize(image, dim=1), torch.nn.functional.normalize(text, dim=1)
    pairs = [(a, b) for a in range(5) for b in range(5) if y[a] == y[b]]
    iid = [float((i[a] - i[b]).norm()) for a, b in pairs if a != b]
    ttd = [float((t[a] - t[b]).norm()) for a, b in pairs if a != b]
    itd = [float((i[a] - t[b]).norm()) for a, b in pairs]
    assert got["iid"] == pytest.approx(sum(iid) / len(iid), rel=1e-5)
    assert got["ttd"] == pytest.approx(sum(ttd) / len(ttd), rel=1e-5)
    assert got["itd"] == pytest.approx(sum(itd) / len(itd), rel=1e-5)


def test_hierarchical_attention_eq2():
    ha = HierarchicalAttentionText(layers=3, hidden=4, lstm_hidden=2, dim=4, dropout=0.0).eval()
    cls, tokens = torch.randn(2, 3, 4), torch.randn(2, 3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float)
    w = torch.sigmoid(cls.mean(-1) @ ha.layer_scores[0].weight.t())  # T'_c = S(M(P_g(T_c)))
    assert torch.allclose(ha.layer_weights(cls), w)
    summed = sum(w[:, k, None, None] * tokens[:, k] for k in range(3))  # U(T'_c ⊙ T_w)
    out0, _ = ha.lstm(summed[:1, :3])  # sample 0: only its 3 real tokens
    out1, _ = ha.lstm(summed[1:])
    pooled = torch.cat([out0.mean(1), out1.mean(1)])
    assert torch.allclose(ha(cls, tokens, mask), ha.project(pooled), atol=1e-5)
    # padding content never matters in the paper variant, and does in the released code's
    noisy = tokens.clone()
    noisy[0, :, 3:] = 100.0
    assert torch.allclose(ha.pooled(cls, noisy, mask), ha.pooled(cls, tokens, mask), atol=1e-5)
    ha.packed, ha.masked_mean = False, False
    assert torch.allclose(ha.pooled(cls, tokens, mask)[1], pooled[1], atol=1e-5)  # a full row: same either way
    assert not torch.allclose(ha.pooled(cls, noisy, mask)[0], ha.pooled(cls, tokens, mask)[0], atol=1e-3)


def test_cross_modal_fusion_eq3():
    cmf = CrossModalFusion(dim=4, dropout=0.0).eval()
    image, text = torch.randn(3, 4), torch.randn(3, 4)
    m = {k: v[0] for k, v in cmf.maps.items()}
    scores = (m["q_image"](image) * text) @ (m["k_image"](image) * text).t() / 2.0  # √D = 2
    image_m = torch.softmax(scores, -1) @ m["v_image"](image)
    scores = (m["q_text"](text) * image) @ (m["k_text"](text) * image).t() / 2.0
    text_m = torch.softmax(scores, -1) @ m["v_text"](text)
    assert torch.allclose(cmf(image, text), torch.cat([image_m, text_m, image, text], -1), atol=1e-6)
    # batch-level: a sample's fused feature depends on its batch companions
    assert not torch.allclose(cmf(image[:2], text[:2])[0], cmf(image, text)[0])


def test_intra_supcon_matches_pytorch_metric_learning_supcon():
    """Where the definitions coincide (mean over positives, self excluded), ours = the library's SupConLoss."""
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    x, y = torch.randn(10, 6), torch.tensor([0, 1, 0, 2, 1, 0, 2, 2, 1, 0])
    expected = losses.SupConLoss(temperature=0.1)(x, y.clone())
    assert intra_supcon(x, y, 0.1, "positives", False).item() == pytest.approx(expected.item(), rel=1e-4)
