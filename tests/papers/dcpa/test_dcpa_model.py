"""DCPA's equations against references: attention/encoder/decoder vs torch.nn with the same weights
(eqs 1-6, 11-12), the text CNN vs a loop (eqs 7-9), top-K aggregation (eqs 10, 14) vs loops, the
hardest-negative triplet loss vs brute force (eq 15), and blocked model scoring vs unblocked."""

from __future__ import annotations

import pytest
import torch

from mmbench.papers.dcpa.evaluate import blocked_all_pairs
from mmbench.papers.dcpa.model import (DCPADims, DCPAModel, TextPhraseCNN, hardest_negative_triplet, l2norm,
                                        topk_mean)
from mmbench.papers.dcpa.attention import EncoderLayer, MultiHeadAttention, PairDecoderLayer

D, H = 16, 4


def _copy_mha(ours: MultiHeadAttention, theirs: torch.nn.MultiheadAttention) -> None:
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.w_q.weight, ours.w_k.weight, ours.w_v.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.w_q.bias, ours.w_k.bias, ours.w_v.bias]))
        theirs.out_proj.weight.copy_(ours.w_o.weight)
        theirs.out_proj.bias.copy_(ours.w_o.bias)


def _copy_ffn_norms(ours, theirs, norms) -> None:
    with torch.no_grad():
        theirs.linear1.load_state_dict(ours.ffn.w_1.state_dict())
        theirs.linear2.load_state_dict(ours.ffn.w_2.state_dict())
        for mine, other in norms:
            other.load_state_dict(mine.state_dict())


def test_multi_head_attention_eqs_1_to_4_match_torch_with_key_mask():
    torch.manual_seed(0)
    ours = MultiHeadAttention(D, H)
    theirs = torch.nn.MultiheadAttention(D, H, batch_first=True)
    _copy_mha(ours, theirs)
    q, kv = torch.randn(3, 5, D), torch.randn(3, 7, D)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    expected, _ = theirs(q, kv, kv, key_padding_mask=~mask)
    torch.testing.assert_close(ours(q, kv, mask), expected, atol=1e-5, rtol=1e-5)


def test_pairwise_broadcast_equals_a_loop_over_pairs():
    torch.manual_seed(0)
    attn = MultiHeadAttention(D, H)
    q, kv = torch.randn(3, 5, D), torch.randn(4, 6, D)
    mask = torch.rand(4, 6) > 0.3
    mask[:, 0] = True
    pairs = attn(q[:, None], kv[None], mask[None])
    assert pairs.shape == (3, 4, 5, D)
    for i in range(3):
        for c in range(4):
            torch.testing.assert_close(pairs[i, c], attn(q[i : i + 1], kv[c : c + 1], mask[c : c + 1])[0], atol=1e-5, rtol=1e-5)


def test_encoder_layer_eqs_5_6_match_torch_post_ln():
    torch.manual_seed(0)
    ours = EncoderLayer(D, H, 32).eval()
    theirs = torch.nn.TransformerEncoderLayer(D, H, 32, dropout=0.0, batch_first=True, norm_first=False).eval()
    _copy_mha(ours.attention, theirs.self_attn)
    _copy_ffn_norms(ours, theirs, [(ours.norm_1, theirs.norm1), (ours.norm_2, theirs.norm2)])
    x = torch.randn(2, 36, D)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_decoder_layer_eqs_11_12_match_torch_decoder():
    torch.manual_seed(0)
    ours = PairDecoderLayer(D, H, 32).eval()
    theirs = torch.nn.TransformerDecoderLayer(D, H, 32, dropout=0.0, batch_first=True, norm_first=False).eval()
    _copy_mha(ours.self_attention, theirs.self_attn)
    _copy_mha(ours.cross_attention, theirs.multihead_attn)
    _copy_ffn_norms(ours, theirs, [(ours.norm_1, theirs.norm1), (ours.norm_2, theirs.norm2), (ours.norm_3, theirs.norm3)])
    regions, words = torch.randn(2, 36, D), torch.randn(2, 9, D)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 6:] = False
    expected = theirs(regions, words, memory_key_padding_mask=~mask)
    torch.testing.assert_close(ours(regions, words, memory_mask=mask), expected, atol=1e-5, rtol=1e-5)


def test_text_cnn_eqs_7_to_9_match_a_loop_and_ignore_padding():
    torch.manual_seed(0)
    cnn = TextPhraseCNN(word_dim=6, filters=5, windows=(1, 2, 3), dim=8).eval()
    words = torch.randn(2, 7, 6)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.bool)
    out = cnn(words, mask)
    for b, n in enumerate((7, 4)):
        pooled = []
        for l, conv in zip((1, 2, 3), cnn.convs):
            w = conv.weight  # [filters, word_dim, l]
            p = [torch.relu((w * words[b, k : k + l].t()[None]).sum((1, 2)) + conv.bias) for k in range(n - l + 1)]
            pooled.append(torch.stack(p).amax(0))  # eq (8)
        expected = l2norm(cnn.norm(cnn.fc(torch.cat(pooled))))  # eq (9)
        torch.testing.assert_close(out[b], expected, atol=1e-5, rtol=1e-5)
    garbage = words.clone()
    garbage[1, 4:] = 100.0  # padding content never matters
    torch.testing.assert_close(cnn(garbage, mask), out)


def test_topk_mean_eqs_10_14():
    torch.manual_seed(0)
    sims = torch.randn(3, 4, 36)
    expected = torch.tensor([[sorted(sims[i, c].tolist(), reverse=True)[:10] for c in range(4)] for i in range(3)]).mean(-1)
    torch.testing.assert_close(topk_mean(sims, 10), expected)
    mask = torch.zeros(3, 4, 36, dtype=torch.bool)
    mask[..., :6] = True  # only 6 valid elements (< K): mean of those six
    torch.testing.assert_close(topk_mean(sims, 10, mask), sims[..., :6].mean(-1))


def test_eq_14_i2t_score_against_a_loop():
    torch.manual_seed(0)
    dims = DCPADims(region_dim=12, word_dim=10, dim=D, heads=H, ffn_dim=32, dropout=0.0, filters=8)
    model = DCPAModel(dims, top_k=5).eval()
    model.stage.fill_(2)
    regions, words = torch.randn(3, 36, 12), torch.randn(4, 8, 10)
    mask = torch.ones(4, 8, dtype=torch.bool)
    mask[2, 5:] = False
    with torch.no_grad():
        img, cap = model.encode_images(regions), model.encode_captions(words, mask)
        s_i2t, s_t2i = model.inter_scores(img, cap)
        for i in range(3):
            for c in range(4):
                n = int(mask[c].sum())
                w = cap["words"][c, :n]
                vp = model.inter.i2t(img["regions"][i : i + 1], w[None])[0]  # i^T for this pair
                a = l2norm(vp) @ l2norm(w).t()  # eq (13)
                expected = a.amax(1).topk(5).values.mean()  # eq (14)
                assert s_i2t[i, c].item() == pytest.approx(expected.item(), abs=1e-5)
                wp = model.inter.t2i(w[None], img["regions"][i : i + 1])[0]  # c^V
                a2 = l2norm(wp) @ l2norm(img["regions"][i]).t()
                assert s_t2i[i, c].item() == pytest.approx(a2.amax(1).topk(min(5, n)).values.mean().item(), abs=1e-5)


def test_not_decoupled_uses_the_average_for_both_directions():
    torch.manual_seed(0)
    dims = DCPADims(region_dim=12, word_dim=10, dim=D, heads=H, ffn_dim=32, dropout=0.0, filters=8)
    model = DCPAModel(dims, top_k=5).eval()
    model.stage.fill_(2)
    regions, words, mask = torch.randn(3, 36, 12), torch.randn(4, 8, 10), torch.ones(4, 8, dtype=torch.bool)
    with torch.no_grad():
        img, cap = model.encode_images(regions), model.encode_captions(words, mask)
        a, b = model.inter_scores(img, cap)
        model.decoupled = False
        c, d = model.inter_scores(img, cap)
        torch.testing.assert_close(c, (a + b) / 2)
        torch.testing.assert_close(d, (a + b) / 2)
        model.decoupled = True
        s_i2t, s_t2i = model.pair_scores(img, cap)  # inference: 0.6 S(i^V,c^T) + 0.4 S(inter)
        intra = model.intra_scores(img, cap)
        torch.testing.assert_close(s_i2t, 0.6 * intra + 0.4 * a)
        torch.testing.assert_close(s_t2i, 0.6 * intra + 0.4 * b)


def brute_force_loss(s_i2t, s_t2i, margin):
    n, total = s_i2t.shape[0], 0.0
    for i in range(n):  # line 1: hardest negative caption of image i
        total += max([0.0] + [max(0.0, margin - s_i2t[i, i].item() + s_i2t[i, j].item()) for j in range(n) if j != i])
    for j in range(n):  # line 2: hardest negative image of caption j
        total += max([0.0] + [max(0.0, margin - s_t2i[j, j].item() + s_t2i[i, j].item()) for i in range(n) if i != j])
    return total


def test_hardest_negative_triplet_eq_15_matches_brute_force():
    torch.manual_seed(0)
    for _ in range(3):
        s_i2t, s_t2i = torch.rand(7, 7), torch.rand(7, 7)
        ours = hardest_negative_triplet(s_i2t, s_t2i, margin=0.1)
        assert ours.item() == pytest.approx(brute_force_loss(s_i2t, s_t2i, 0.1), abs=1e-5)
    s = torch.eye(4)  # positives beat every negative by more than the margin: no loss
    assert hardest_negative_triplet(s, s, 0.1).item() == 0.0
    summed = hardest_negative_triplet(torch.zeros(3, 3), torch.zeros(3, 3), 0.1, max_violation=False)
    assert summed.item() == pytest.approx(2 * 3 * 2 * 0.1)  # every negative of every query violates by M


def test_model_blocked_scores_equal_unblocked():
    torch.manual_seed(0)
    dims = DCPADims(region_dim=12, word_dim=10, dim=D, heads=H, ffn_dim=32, dropout=0.0, filters=8)
    model = DCPAModel(dims, top_k=5).double().eval()
    model.stage.fill_(2)
    regions, words = torch.randn(6, 36, 12, dtype=torch.float64), torch.randn(30, 9, 10, dtype=torch.float64)
    mask = torch.arange(9)[None] < torch.randint(3, 10, (30, 1))
    with torch.no_grad():
        img = model.encode_images(regions)

        def encode(indices):
            return model.encode_captions(words[indices], mask[indices])

        def score(i0, i1, cap):
            return model.pair_scores({k: v[i0:i1] for k, v in img.items()}, cap)

        whole = blocked_all_pairs(6, 30, encode, score, 6, 30)
        blocked = blocked_all_pairs(6, 30, encode, score, 4, 7)
    for a, b in zip(whole, blocked):
        assert torch.equal(a, b)
