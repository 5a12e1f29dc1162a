"""DCPA's Bi-GRU text backbone (Table I `[GRU]` rows): SCAN's vocabulary (threshold, <unk>, fixed
order), the encoder against a hand-run torch.nn.GRU per direction, joint training (gradients reach the
GRU, the BERT cache is never touched), a self-contained checkpoint vocabulary, and a smoke run through
the trainer on synthetic SCAN-layout data."""

from __future__ import annotations

import json

import pytest
import torch

from mmbench.engine.checkpoint import load_checkpoint
from mmbench.engine.optim import build_optimizer
from mmbench.engine.trainer import build_session, fit
from mmbench.errors import MmbenchError
from mmbench.papers.dcpa import method as dcpa, text as dcpa_text
from mmbench.papers.dcpa.gru import (BiGRUWordEncoder, TokenIds, build_vocab, check_checkpoint_vocab, encode,
                                      tokenize, vocab_from_bytes)
from mmbench.recipes.loader import load_paper, resolve
from test_dcpa_method import _step as dcpa_step

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def _shared_data(tmp_path_factory):
    return tmp_path_factory.mktemp("dcpa-gru-data")


@pytest.fixture(autouse=True)
def _dirs(tmp_path, monkeypatch, _shared_data):
    monkeypatch.setenv("MMBENCH_DATA", str(_shared_data))
    monkeypatch.setenv("MMBENCH_RUNS", str(tmp_path / "runs"))


# -- vocabulary ----------------------------------------------------------------------------------------
def test_tokenize_mimics_word_tokenize_on_captions():
    assert tokenize("A dog's T-shirt, don't LOOK.") == ["a", "dog", "'s", "t-shirt", ",", "do", "n't", "look", "."]


def test_vocab_threshold_specials_order_and_unknown_words():
    captions = ["a dog runs .", "a dog sits .", "a cat runs .", "the dog runs", "a dog ."]
    vocab = build_vocab(captions, threshold=3)
    # counts: a 4, dog 4, runs 3, . 4, sits/cat/the 1 → kept: ., a, dog, runs (alphabetical after specials)
    assert vocab == ["<pad>", "<start>", "<end>", "<unk>", ".", "a", "dog", "runs"]
    assert build_vocab(list(reversed(captions)), threshold=3) == vocab  # caption order does not matter
    assert build_vocab(captions, threshold=1)[4:] == sorted({t for c in captions for t in tokenize(c)})
    index = {w: i for i, w in enumerate(vocab)}
    assert encode("A cat runs", index) == [1, index["a"], 3, index["runs"], 2]  # <start> … <unk> … <end>


def test_token_ids_pad_with_zero_and_mask_lengths():
    vocab = build_vocab(["a b", "a b c"], threshold=1)
    ids, mask = TokenIds(["a b c", "b"], vocab).batch([1, 0], torch.device("cpu"))
    assert ids.tolist() == [[1, vocab.index("b"), 2, 0, 0], [1, vocab.index("a"), vocab.index("b"), vocab.index("c"), 2]]
    assert mask.tolist() == [[True, True, True, False, False], [True] * 5]


# -- encoder -------------------------------------------------------------------------------------------
def test_bigru_encoder_averages_directions_like_a_hand_run_gru():
    torch.manual_seed(0)
    vocab = build_vocab(["x y z w v"], threshold=1)
    encoder = BiGRUWordEncoder(vocab, embed_dim=5, hidden=7).eval()
    ids = torch.tensor([[1, 4, 5, 6, 2], [1, 7, 2, 0, 0], [1, 8, 4, 2, 0]])
    mask = ids != 0
    out = encoder(ids, mask)
    assert out.shape == (3, 5, 7)

    def one_direction(suffix: str) -> torch.nn.GRU:
        gru = torch.nn.GRU(5, 7, batch_first=True)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(gru, f"{name}_l0").data.copy_(getattr(encoder.gru, f"{name}_l0{suffix}"))
        return gru

    forward, backward = one_direction(""), one_direction("_reverse")
    with torch.no_grad():
        for row in range(3):
            n = int(mask[row].sum())
            x = encoder.embed(ids[row, :n])[None]  # the caption alone: no padding anywhere
            h_fwd = forward(x)[0][0]
            h_bwd = backward(x.flip(1))[0][0].flip(0)  # the backward GRU reads from the last word
            torch.testing.assert_close(out[row, :n], (h_fwd + h_bwd) / 2, rtol=1e-5, atol=1e-6)
            assert torch.all(out[row, n:] == 0)  # padding gets no feature


# -- method --------------------------------------------------------------------------------------------
def _step(session, optimizer, epoch):
    batch = next(iter(session.method.train_batches(epoch)))
    assert batch["words"].dtype == torch.long  # token ids: the GRU runs inside the model
    return dcpa_step(session, optimizer, epoch)


def test_gru_backbone_trains_in_stage_one_freezes_in_stage_two_and_never_uses_the_bert_cache(monkeypatch):
    def no_bert(*args, **kwargs):
        raise AssertionError("the frozen-BERT word cache was used by the Bi-GRU backbone")

    monkeypatch.setattr(dcpa, "word_features", no_bert)
    monkeypatch.setattr(dcpa_text, "_build", no_bert)
    resolved = resolve("dcpa/flickr30k-gru", ["model.stage1_epochs=1", "train.epochs=2"], smoke=True)
    session = build_session(resolved, seed=0)
    method, model = session.method, session.model
    gru = model.intra.word_encoder
    assert isinstance(gru, BiGRUWordEncoder) and isinstance(method.words["train"], TokenIds)
    # word features are the GRU's hidden size (32 in smoke), not 2 × hidden, not BERT's width
    assert model.dims.word_dim == 32 == gru.hidden
    assert model.intra.textual.convs[0].in_channels == 32 and model.inter.word_fc.in_features == 32
    train_captions = list(method.data["train"]["caption"])
    assert gru.vocab == method.vocab == build_vocab(train_captions, 4)

    optimizer = build_optimizer(model.named_parameters(), resolved.recipe.train.optimizers["main"])
    method.on_epoch_start(0)
    before = [p.detach().clone() for p in gru.parameters()]
    grads = {}  # the step zeroes grads after Adam: record them as they land
    for name, p in gru.named_parameters():
        p.register_post_accumulate_grad_hook(lambda p, name=name: grads.__setitem__(name, float(p.grad.abs().sum())))
    _step(session, optimizer, 0)
    assert set(grads) == {name for name, _ in gru.named_parameters()} and min(grads.values()) > 0, grads
    assert all(not torch.equal(a, p) for a, p in zip(before, gru.parameters()))

    method.on_epoch_start(1)
    optimizer.zero_grad(set_to_none=True)
    before = [p.detach().clone() for p in gru.parameters()]
    inter = [p.detach().clone() for p in model.inter.parameters()]
    grads.clear()
    _step(session, optimizer, 1)
    assert not grads and all(not p.requires_grad for p in gru.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, gru.parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(inter, model.inter.parameters()))


def test_stage_two_can_train_the_backbone_when_asked():
    resolved = resolve("dcpa/flickr30k-gru", ["model.stage1_epochs=0", "model.train_text_backbone_in_stage2=true"], smoke=True)
    session = build_session(resolved, seed=0)
    session.method.on_epoch_start(0)
    assert int(session.model.stage) == 2
    assert all(p.requires_grad for p in session.model.intra.word_encoder.parameters())
    assert not any(p.requires_grad for p in session.model.intra.visual.parameters())


def test_smoke_training_end_to_end_keeps_the_vocabulary_in_the_checkpoint():
    result = fit(resolve("dcpa/flickr30k-gru", ["model.stage1_epochs=1", "train.epochs=2"], smoke=True), 0,
                 log=lambda s: None)
    test = result["metrics"]["test"]
    assert {"i2t_r1", "t2i_r10", "rsum", "r1_sum"} <= set(test)
    assert result["selected_epoch"] == 2 and test["select_rsum"] > 1000  # the stage-2 epoch was selected
    log = [json.loads(line) for line in open(f"{result['run_dir']}/log.jsonl")]
    assert [row["train"]["stage"] for row in log] == [1.0, 2.0]

    best = f"{result['run_dir']}/checkpoints/best.pt"
    state = torch.load(best, map_location="cpu", weights_only=True)["model"]
    vocab = vocab_from_bytes(state["intra.word_encoder.vocab_utf8"])
    session = build_session(resolve("dcpa/flickr30k-gru", smoke=True), seed=0)
    assert vocab == session.method.vocab  # rebuilt deterministically from the same training captions
    load_checkpoint(best, session.model)  # a fresh model of the same recipe takes the weights
    check_checkpoint_vocab(best, vocab)
    with pytest.raises(MmbenchError, match="vocabulary differs"):
        check_checkpoint_vocab(best, vocab[:-1])


def test_stage_one_gru_checkpoint_starts_stage_two():
    intra = fit(resolve("dcpa/flickr30k-gru-intra", ["train.epochs=1", "model.stage1_epochs=1"], smoke=True), 0,
                log=lambda s: None)
    best = f"{intra['run_dir']}/checkpoints/best.pt"
    session = build_session(resolve("dcpa/flickr30k-gru", [f"model.stage1_checkpoint={best}"], smoke=True), seed=0)
    assert session.method.stage == 2
    torch.save({"model": {}}, f"{intra['run_dir']}/bert.pt")  # no Bi-GRU vocabulary inside
    with pytest.raises(MmbenchError, match="not a Bi-GRU DCPA checkpoint"):
        build_session(resolve("dcpa/flickr30k-gru", [f"model.stage1_checkpoint={intra['run_dir']}/bert.pt"], smoke=True), seed=0)


def test_paper_gru_rows_resolve_to_bigru_recipes():
    table1 = next(t for t in load_paper("dcpa").tables if t.id == "table1")
    rows = {r.label: r for r in table1.rows}
    for label, stage1_only in (("Intra-PAM [GRU]", True), ("Full-Model [GRU]", False)):
        for dataset in ("flickr30k", "coco"):
            resolved = resolve(rows[label].recipe.format(dataset=dataset))
            cfg = resolved.model_config
            assert (cfg.text_backbone, cfg.word_embed_dim, cfg.gru_hidden, cfg.gru_layers, cfg.vocab_threshold) == ("bigru", 300, 1024, 1, 4)
            assert (resolved.recipe.train.epochs == cfg.stage1_epochs) == stage1_only
            assert resolved.recipe.dataset == dataset
    assert rows["Full-Model [GRU]"].paper[6] == 467.9 and rows["Intra-PAM [GRU]"].paper[13] == 508.8
