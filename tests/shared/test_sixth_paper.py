"""docs/DEVELOPING.md "Add a sixth paper", followed literally for a toy paper: a ten-line method
registered, a recipe and a paper.yaml in a user recipes folder, a smoke reproduction, a table."""

import zlib

import torch

from mmbench.engine.method import Method
from mmbench.metrics.classification import classification_metrics
from mmbench.registry import method_registry
from pydantic import BaseModel, ConfigDict


class ToyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    buckets: int = 64


class ToyBagOfWords(Method):
    """Hashed bag of words → linear layer (the walkthrough's method)."""
    Config = ToyConfig

    def setup(self):
        def encode(split):
            return [{"index": i, "label": row["label"], "words": [zlib.crc32(w.encode()) % self.config.buckets for w in row["sentence"].split()]}
                    for i, row in enumerate(self.data[split])]
        self.examples = {split: encode(split) for split in ("train", "dev", "test")}

    def collate(self, examples):
        x = torch.zeros(len(examples), self.config.buckets)
        for row, e in enumerate(examples):
            x[row, e["words"]] = 1.0
        return {"x": x, "labels": torch.tensor([e["label"] for e in examples]), "index": [e["index"] for e in examples]}

    def build_model(self):
        return torch.nn.Linear(self.config.buckets, 3)

    def train_step(self, model, batch, step):
        loss = torch.nn.functional.cross_entropy(model(batch["x"]), batch["labels"])
        step.backward(loss)
        step.optimizer_step("main")
        return {"loss": loss.item()}

    def predict(self, model, batch):
        return [{"index": i, "pred": p} for i, p in zip(batch["index"], model(batch["x"]).argmax(-1).tolist())]

    def metrics(self, predictions, split):
        gold = [self.examples[split][p["index"]]["label"] for p in predictions]
        return classification_metrics(gold, [p["pred"] for p in predictions], 3)


RECIPE = """paper: toy
method: toy_bow
dataset: twitter15
variant: paper
description: Toy bag-of-words classifier (the DEVELOPING.md walkthrough).
model: {buckets: 64}
train:
  epochs: 2
  batch_size: 16
  optimizers: {main: {name: adamw, lr: 1.0e-2}}
  select_metric: accuracy
"""
PAPER = """paper: toy
title: "A toy paper"
citation: "Nobody, 2026."
tables:
  - id: table1
    title: "Table 1: toy results"
    columns:
      - {dataset: twitter15, metric: accuracy, header: "T15 Acc"}
    rows:
      - {label: "Toy BoW (ours)", recipe: "toy/{dataset}", paper: [60.0]}
"""


def test_walkthrough_adds_a_sixth_paper_end_to_end(mm_env, monkeypatch, capsys):
    from mmbench.reproduce import run_plan

    recipes = mm_env / "my-recipes"
    (recipes / "toy").mkdir(parents=True)
    (recipes / "toy" / "twitter15.yaml").write_text(RECIPE)
    (recipes / "toy" / "paper.yaml").write_text(PAPER)
    monkeypatch.setenv("MMBENCH_RECIPES", str(recipes))
    monkeypatch.setitem(method_registry._entries, "toy_bow", ToyBagOfWords)  # = one line in mmbench/registry.py

    run_plan("toy", "twitter15", n_seeds=None, smoke=True, dry_run=False, skip_existing=False, device="cpu")
    table = capsys.readouterr().out
    assert "Table 1: toy results" in table and "Toy BoW (ours)" in table and "60.00" in table
    assert "not run" not in table.split("Toy BoW (ours)")[1].splitlines()[0]
