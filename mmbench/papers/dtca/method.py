"""DTCA (Dual-encoder Transformers with Cross-modal Alignment) for joint multimodal aspect-sentiment
extraction: each tweet of Twitter-2015/2017 is one sequence-labelling example with 5 tags.

Pieces: data grouping and tags in `mmbench.papers.dtca.mabsa`, encoders in `encoders.py`, the
network in `model.py`, optimal transport in `alignment.py`, the metric in `mmbench.papers.dtca.metrics`.
`tagger` picks the full model (`dtca`) or the text-only RoBERTa rows of Table 2 (`text_softmax`: the
eq (6)–(7) head alone; `text_crf`: a CRF on the text states).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from mmbench.papers.dtca.mabsa import group_rows, tags_to_triples
from mmbench.data.image_store import ImageStore, image_paths
from mmbench.data.images import load_rgb, resolve_image
from mmbench.engine.method import Method, StepControl
from mmbench.errors import DataError, RecipeError
from mmbench.papers.dtca.encoders import load_image, load_text, word_pieces
from mmbench.papers.dtca.model import IGNORE, DTCAModel
from mmbench.papers.dtca.metrics import span_f1


class DTCAConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text_encoder: str = "roberta-base"
    image_encoder: str | None = "google/vit-base-patch16-224-in21k"
    tiny_encoders: bool = False  # random-init tiny encoders of the same families (smoke runs)
    # False: the image encoder's architecture at random init. The released main.py copies DeiT's checkpoint
    # keys ("embeddings.…") into a model whose keys are "deit.embeddings.…": nothing matches, so its DeiT row
    # of Figure 5 trains a randomly initialised DeiT; `model.image_pretrained=false` reproduces that
    image_pretrained: bool = True
    tagger: Literal["dtca", "text_crf", "text_softmax"] = "dtca"
    max_length: int = 60
    pad_to_max_length: bool = False  # released code pads every sentence to 60 (matters for its OT mask)
    # cross-attention (eqs 8-9)
    num_heads: int = 8
    head_dim: int | None = None  # None: d_h / U (eq 8); the released code uses 768 per head
    attention_bias: bool = True
    cross_ffn: bool = True  # MLP + second LayerNorm/residual after the attention (§2.2); released code: none
    ffn_dim: int | None = None  # None: 4·d_h
    official_init: bool = False
    image_tokens: Literal["patches", "all"] = "patches"  # eq (8) uses v̂_1..v̂_M; released code also the [CLS]
    dropout: float = 0.1
    # joint loss (eq 22)
    alpha: float = 0.6
    beta: float = 0.6
    # token-patch alignment (eqs 13-21)
    ot_solver: Literal["emd", "ipot"] = "emd"
    # eq (15): `unit` = ‖t̂/‖t̂‖ − v̂/‖v̂‖‖² (default, see assumptions); `nmse` = as printed; `cosine` = released code
    ot_cost: Literal["unit", "nmse", "nmse_unit", "cosine"] = "unit"
    ot_text_tokens: Literal["words", "inverted_padding"] = "words"
    ipot_proximal_beta: float = 0.5
    ipot_iterations: int = 50
    ipot_k: int = 1
    # CRF (eqs 10-12)
    crf_mask: Literal["packed", "noncontiguous"] = "packed"
    crf_reduction: Literal["mean", "sum_div10"] = "mean"
    decode: Literal["viterbi", "argmax"] = "viterbi"
    # evaluation: released `cal_f1` counts a sentence's gold pairs as a set; its log keeps the text-only
    # head's best F1 over the epochs evaluated (`text_best_metric`), apart from the main head's epoch:
    # `own_best` adds text_best_f1/precision/recall (best so far over this run's evaluations of a split)
    gold_as_set: bool = False
    text_metrics_epoch: Literal["selected", "own_best"] = "selected"


def ot_token_mask(n_tokens: int, length: int, mode: str) -> torch.Tensor:
    """The text positions L_WD transports, for a sentence of `n_tokens` (with <s>, </s>) padded to `length`."""
    mask = torch.zeros(length, dtype=torch.bool)
    if mode == "words":
        mask[1 : n_tokens - 1] = True  # t̂_1..t̂_N: the text's sub-tokens, not <s>, </s> or padding
    else:
        mask[n_tokens:] = True  # released code: `attention_mask == 1` passed as the PAD mask
    return mask


class DTCA(Method):
    Config = DTCAConfig

    # -- data -----------------------------------------------------------------------------------
    def setup(self) -> None:
        config = self.config
        self.text_encoder, self.tokenizer = load_text(config.text_encoder, config.tiny_encoders)
        self.image = None
        if config.tagger == "dtca":
            if config.image_encoder is None:
                raise RecipeError("model.image_encoder is null but model.tagger=dtca needs one (use tagger=text_crf or text_softmax)")
            self.image = load_image(config.image_encoder, config.tiny_encoders, config.image_pretrained)
        data_cfg = self.recipe.data
        self.images_root = Path(data_cfg.images or self.manifest["images_root"])
        self.sentences, self.truncated = {}, {}
        for split in ("train", "dev", "test"):
            self.sentences[split] = group_rows(list(self.data[split]))
            self.examples[split] = [self._encode(i, s) for i, s in enumerate(self.sentences[split])]
            # gold aspects whose words fall beyond max_length: never predictable, still in the recall denominator
            self.truncated[split] = sum(sum(end >= e["n_kept"] for _, end, _ in e["gold"]) for e in self.examples[split])
        self.pixel_store = None  # every image decoded and resized once into a content-keyed uint8 memmap (data.image_store)
        if self.image is not None:
            self.image_paths = image_paths(self.images_root, [e["image_id"] for s in self.examples.values() for e in s],
                                           data_cfg.missing_image, data_cfg.substitute_image)
            if any(self.image_paths.values()) and self.image.processor is not None:
                self.pixel_store = ImageStore.open(list(self.image_paths.values()), self.image.processor)

    def _encode(self, index: int, sentence) -> dict:
        ids, firsts = word_pieces(self.tokenizer, sentence.words, self.config.max_length)
        return {"index": index, "id": sentence.id, "input_ids": ids, "word_index": firsts, "n_kept": len(firsts),
                "word_tags": sentence.tags[: len(firsts)], "gold": [list(t) for t in sentence.gold],
                "image_id": sentence.image_id}

    def _pixels(self, image_id: str) -> torch.Tensor:
        if self.pixel_store is not None and image_id in self.image_paths:  # the processor's values; blank: zeros, as below
            return self.pixel_store.batch([self.image_paths[image_id]], blank="zeros")[0]
        data_cfg = self.recipe.data
        try:
            path = resolve_image(self.images_root, image_id, data_cfg.missing_image, data_cfg.substitute_image)
        except DataError:
            if data_cfg.missing_image != "blank":
                raise
            return torch.zeros(3, self.image.image_size, self.image.image_size)  # zeros: the mean image after ViT-in21k normalisation
        return self.image.preprocess([load_rgb(path)])[0]

    def collate(self, examples: list[dict]) -> dict:
        config, device = self.config, self.ctx.device
        length = config.max_length if config.pad_to_max_length else max(len(e["input_ids"]) for e in examples)
        words = max(e["n_kept"] for e in examples)
        size = len(examples)
        ids = torch.full((size, length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((size, length), dtype=torch.long)
        token_labels = torch.full((size, length), IGNORE, dtype=torch.long)
        word_index = torch.zeros((size, words), dtype=torch.long)
        word_tags = torch.zeros((size, words), dtype=torch.long)
        word_mask = torch.zeros((size, words), dtype=torch.bool)
        ot_text_mask = torch.zeros((size, length), dtype=torch.bool)
        for row, e in enumerate(examples):
            n, w = len(e["input_ids"]), e["n_kept"]
            ids[row, :n] = torch.tensor(e["input_ids"])
            attention[row, :n] = 1
            word_index[row, :w] = torch.tensor(e["word_index"])
            word_tags[row, :w] = torch.tensor(e["word_tags"])
            word_mask[row, :w] = True
            token_labels[row, e["word_index"]] = torch.tensor(e["word_tags"])
            ot_text_mask[row] = ot_token_mask(n, length, config.ot_text_tokens)
        batch = {"input_ids": ids, "attention_mask": attention, "token_labels": token_labels, "word_index": word_index,
                 "word_tags": word_tags, "word_mask": word_mask, "ot_text_mask": ot_text_mask}
        if self.image is not None:
            batch["pixel_values"] = torch.stack([self._pixels(e["image_id"]) for e in examples])
        batch = {k: v.to(device) for k, v in batch.items()}
        batch["index"] = [e["index"] for e in examples]
        batch["gold"] = [e["gold"] for e in examples]
        return batch

    # -- model ----------------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        image = self.image
        return DTCAModel(self.config, self.text_encoder, image.model if image else None,
                         image.hidden_size if image else 0, image.prefix_tokens if image else 0)

    def parameters_for(self, model, optimizer_name: str):
        """All trainable parameters; those of LayerNorm modules are named `….LayerNorm.<weight|bias>`
        so that the engine's no-decay rule sees them as the released HF Trainer does (by module type:
        ViT's `layernorm_before`/`layernorm_after` and the cross-attention's norms are LayerNorms too)."""
        norms = {name for name, module in model.named_modules() if isinstance(module, torch.nn.LayerNorm)}
        for name, param in model.named_parameters():
            owner, _, leaf = name.rpartition(".")
            yield (f"{owner}.LayerNorm.{leaf}" if owner in norms else name), param

    def train_step(self, model, batch, step: StepControl) -> dict[str, float]:
        with step.autocast():
            terms = model(batch)
        step.backward(terms["loss"])
        step.optimizer_step("main")
        return {k: float(v.detach()) for k, v in terms.items()}

    def predict(self, model, batch) -> list[dict]:
        module = model.module if hasattr(model, "module") else model
        decoded = module.decode(batch)
        out = []
        for i, gold, tags, text_tags in zip(batch["index"], batch["gold"], decoded["tags"], decoded["text_tags"]):
            out.append({"index": i, "gold": gold,
                        "pred": [list(t) for t in tags_to_triples(tags)],
                        "text_pred": [list(t) for t in tags_to_triples(text_tags)]})
        return out

    def metrics(self, predictions: list[dict], split: str) -> dict[str, float]:
        gold = [[tuple(t) for t in p["gold"]] for p in predictions]
        as_set = self.config.gold_as_set
        main = span_f1(gold, [[tuple(t) for t in p["pred"]] for p in predictions], as_set)
        text = span_f1(gold, [[tuple(t) for t in p["text_pred"]] for p in predictions], as_set)
        extra = {}
        if self.config.text_metrics_epoch == "own_best":  # best over this run's evaluations of the split so far
            best = self.__dict__.setdefault("_text_best", {})
            if split not in best or text["f1"] > best[split]["f1"]:
                best[split] = text
            extra = {f"text_best_{k}": best[split][k] for k in ("f1", "precision", "recall")}
        return {"f1": main["f1"], "precision": main["precision"], "recall": main["recall"],
                "text_f1": text["f1"], "text_precision": text["precision"], "text_recall": text["recall"],
                "gold_aspects": main["gold"], "gold_truncated": float(self.truncated.get(split, 0)), **extra}
