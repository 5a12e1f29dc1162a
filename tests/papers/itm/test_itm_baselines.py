"""The text-only rows of ITM Table 3 (also CMCS Table 1): the BERT recipes follow TomBERT's
run_classifier.py (the source of the printed BERT numbers); the RoBERTa recipes say that no source
of their numbers was found; the pooled-output head reads BertPooler(dense + tanh on [CLS])."""

from __future__ import annotations

import pytest
import torch

from mmbench.recipes.loader import resolve


@pytest.mark.parametrize("dataset, n_train", [("twitter15", 3179), ("twitter17", 3562)])
def test_bert_recipe_is_tomberts_run_classifier(dataset, n_train):
    r = resolve(f"baselines/{dataset}-bert")
    train, opt, model = r.recipe.train, r.recipe.train.optimizers["main"], r.model_config
    assert (model.max_length, model.head, model.lowercase, model.dropout) == (64, "pooler", True, 0.1)
    assert (train.epochs, train.batch_size, train.seeds, train.precision) == (6, 32, [42], "fp32")
    assert (opt.name, opt.lr, opt.eps, opt.weight_decay, opt.warmup) == ("bertadam", 5e-5, 1e-6, 0.01, 0.1)
    assert opt.t_total == opt.schedule.t_total == int(n_train / 32 * 6)  # run_classifier's num_train_steps
    assert opt.schedule.name == "bert_warmup_linear" and train.grad_clip_mode == "per_tensor" and train.select_ties_to_later
    assert "run_classifier.py" in r.recipe.sources["model.text_encoder"]
    roberta = resolve(f"baselines/{dataset}-roberta").recipe
    assert any("Source of the RoBERTa row" in a and "none found" in a for a in roberta.assumptions)
    assert roberta.train.precision == "fp32"


def test_pooler_head_reads_the_pooled_first_token():
    from mmbench.encoders.tiny import tiny_text_model
    from mmbench.papers.baselines.method import FirstTokenClassifier

    torch.manual_seed(0)
    encoder = tiny_text_model("bert")
    model = FirstTokenClassifier(encoder, 3, 0.0, head="pooler").eval()
    ids, mask = torch.randint(5, 50, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    with torch.no_grad():
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = model.classifier(torch.tanh(encoder.pooler.dense(hidden[:, 0])))
        torch.testing.assert_close(model(ids, mask), expected)
        first = FirstTokenClassifier(encoder, 3, 0.0).eval()
        first.classifier.load_state_dict(model.classifier.state_dict())
        assert not torch.allclose(first(ids, mask), expected)  # the first-token head is a different input


def test_table3_carries_the_printed_std():
    from mmbench.recipes.loader import load_paper

    table = next(t for t in load_paper("itm").tables if t.id == "table3")
    std = {row.label: row.std for row in table.rows}
    assert std["ITM (ours)"] == [0.28, 0.40, 0.21, 0.27] and std["TomBERT"] == [0.40, 0.16, 0.73, 0.50]
    assert sum(s is not None for s in std.values()) == 6 and std["BERT"] is None  # the last 5 rows + CapBERT
