"""Text-only targeted sentiment (TMSC) baseline: BERT / RoBERTa on the sentence–target pair.

Input: tokenizer(sentence, target) — `[CLS] sentence [SEP] target [SEP]` for BERT and
`<s> sentence </s></s> target </s>` for RoBERTa (the pair encoding ITM uses). The sentence keeps
the `$T$` placeholder by default (ITM's released code); `sentence_form: substitute` puts the target
back in. A dropout + linear classifier reads the first token's state (`head: first_token`) or,
as TomBERT's `run_classifier.py` (BertForSequenceClassification) does, the encoder's pooled output
(`head: pooler`: dense + tanh on the first token, with the checkpoint's pretrained pooler weights).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from mmbench.data.collate import pad_sequences
from mmbench.encoders.pretrained import load_or_explain
from mmbench.encoders.text import load_text_encoder
from mmbench.encoders.tiny import TINY_TEXT, tiny_text_model, tiny_tokenizer
from mmbench.engine.method import Method, StepControl
from mmbench.metrics.classification import classification_metrics


class TextTMSCConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text_encoder: str = "bert-base-uncased"
    max_length: int = 128
    sentence_form: Literal["keep_placeholder", "substitute"] = "keep_placeholder"
    lowercase: bool = False  # ITM lowercases text for roberta-base (a cased vocabulary)
    dropout: float = 0.1
    encoder_dropout: float | None = None  # None keeps the encoder config's dropout
    num_labels: int = 3
    head: Literal["first_token", "pooler"] = "first_token"


def load_encoder_with_pooler(name: str):
    """(model, tokenizer) keeping the checkpoint's pooler (the shared loader drops it)."""
    if name in TINY_TEXT:
        return tiny_text_model(TINY_TEXT[name]), tiny_tokenizer(TINY_TEXT[name])
    from transformers import AutoModel, AutoTokenizer

    return load_or_explain(name, "text_encoder", lambda source: (AutoModel.from_pretrained(source, dtype="float32"),
                                                                 AutoTokenizer.from_pretrained(source)))


class FirstTokenClassifier(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module, num_labels: int, dropout: float, head: str = "first_token"):
        super().__init__()
        self.encoder, self.head = encoder, head
        if head == "pooler" and getattr(encoder, "pooler", None) is None:
            raise ValueError("head=pooler needs an encoder loaded with its pooler")
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        first = out.pooler_output if self.head == "pooler" else out.last_hidden_state[:, 0]
        return self.classifier(self.dropout(first))


class TextTMSC(Method):
    Config = TextTMSCConfig

    def setup(self) -> None:
        load = load_encoder_with_pooler if self.config.head == "pooler" else load_text_encoder
        self.encoder, self.tokenizer = load(self.config.text_encoder)
        self.examples = {split: self._encode(self.data[split]) for split in ("train", "dev", "test")}

    def _text(self, row: dict) -> tuple[str, str]:
        sentence, target = row["sentence"], row["target"]
        if self.config.sentence_form == "substitute":
            sentence = sentence.replace("$T$", target)
        if self.config.lowercase:
            sentence, target = sentence.lower(), target.lower()
        return sentence, target

    def _encode(self, split_data) -> list[dict]:
        pairs = [self._text(row) for row in split_data]
        encoded = self.tokenizer([s for s, _ in pairs], [t for _, t in pairs], truncation=True, max_length=self.config.max_length)
        keys = [k for k in ("input_ids", "token_type_ids") if k in encoded]
        return [
            {"index": i, "label": int(row["label"]), **{k: encoded[k][i] for k in keys}}
            for i, row in enumerate(split_data)
        ]

    def collate(self, examples: list[dict]) -> dict:
        device = self.ctx.device
        ids, mask = pad_sequences([e["input_ids"] for e in examples], self.tokenizer.pad_token_id)
        batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device),
                 "labels": torch.tensor([e["label"] for e in examples], device=device),
                 "index": [e["index"] for e in examples]}
        if "token_type_ids" in examples[0]:
            batch["token_type_ids"] = pad_sequences([e["token_type_ids"] for e in examples], 0)[0].to(device)
        return batch

    def build_model(self) -> torch.nn.Module:
        if self.config.encoder_dropout is not None:
            for module in self.encoder.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = self.config.encoder_dropout
        return FirstTokenClassifier(self.encoder, self.config.num_labels, self.config.dropout, self.config.head)

    @staticmethod
    def _inputs(batch: dict) -> dict:
        return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}

    def train_step(self, model, batch, step: StepControl) -> dict[str, float]:
        with step.autocast():
            logits = model(**self._inputs(batch))
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits  # at least fp32
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
        step.backward(loss)
        step.optimizer_step("main")
        return {"loss": loss.item()}

    def predict(self, model, batch) -> list[dict]:
        logits = model(**self._inputs(batch)).float()
        preds = logits.argmax(-1).tolist()
        return [{"index": i, "label": int(y), "pred": int(p)} for i, y, p in zip(batch["index"], batch["labels"].tolist(), preds)]

    def metrics(self, predictions: list[dict], split: str) -> dict[str, float]:
        return classification_metrics([p["label"] for p in predictions], [p["pred"] for p in predictions], self.config.num_labels)
