"""ITM (Yu et al., IJCAI-22): coarse-to-fine image-target matching for TMSC, trained by alternating
optimisation over two data sources (eq 10): each step first updates the "aux" optimiser on an
Image-Target Matching batch (λ1·L_RE + λ2·L_ATT), then the "main" optimiser on a Twitter batch
(L_TMSC). The model is in `model.py`; labels and metrics in `mmbench/papers/itm/metrics.py`.

Evaluation: the dev/test split of the main dataset is followed by the same split of the ITM set, so
one test evaluation yields the sentiment metrics (Table 3/6) and the relevance (Table 4) and
alignment (Table 5) metrics. Sentiment metrics count only the Twitter examples.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from mmbench.papers.itm.regions import RegionStore
from mmbench.data.prepare import load_prepared, prepared_dir
from mmbench.encoders.text import load_text_encoder
from mmbench.engine.batching import epoch_batches, rank_slice
from mmbench.engine.method import Method, StepControl
from mmbench.errors import DataError
from mmbench.papers.itm.model import ITMNetwork, alignment_loss, relevance_loss, sentiment_loss
from mmbench.metrics.classification import classification_metrics
from mmbench.papers.itm.metrics import alignment_example, alignment_metrics, alignment_target, box_iou, relevance_metrics

MAIN, AUX = 0, 1  # which data source an example comes from


class ITMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text_encoder: str = "roberta-base"
    lowercase: bool = True  # released code lowercases sentence and target for roberta-base
    max_length: int = 128
    region_dim: int = 2048
    num_regions: int = 100
    num_heads: int = 12
    ffn_dim: int = 3072
    dropout: float = 0.1
    image_layers: int = 1
    init_std: float = 0.02
    num_labels: int = 3
    aux_dataset: str = "itm-vg"
    # eq 10 weights and the Table 6 switches
    lambda_relevance: float = 1.0
    lambda_alignment: float = 0.5
    coarse_matching: bool = True
    fine_matching: bool = True
    # paper vs released code
    relevance_head: Literal["sigmoid", "softmax2"] = "sigmoid"
    relevance_dropout: float = 0.3
    alignment_distribution: Literal["mean_probs", "softmax_mean_logits"] = "mean_probs"
    kl_normaliser: Literal["related", "batch"] = "related"
    iou_threshold: float = 0.5
    iou_inclusive: bool = False
    gt_boxes: Literal["all", "first"] = "all"
    # the paper states none; the released code (that printed Table 3) divides by the Frobenius norm
    feature_norm: Literal["none", "frobenius"] = "frobenius"
    fine_query: Literal["first_token", "pooler"] = "first_token"
    classifier_head: Literal["linear", "pooler"] = "linear"
    aux_cycle: Literal["reshuffle", "replay_first_pass"] = "reshuffle"
    # grounding accuracy (IoU ≥ 0.5 of the top-1 proposal with the first GT box) over related targets
    # with a box, or over every related target (released code: a box-less one counts as a miss)
    grounding_denominator: Literal["with_box", "related"] = "with_box"


class ITM(Method):
    Config = ITMConfig
    optimizer_names = ("main", "aux")

    # -- data -----------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, recipe = self.config, self.recipe
        self.encoder, self.tokenizer = load_text_encoder(cfg.text_encoder)
        aux_data, _ = load_prepared(cfg.aux_dataset, synthetic=recipe.data.synthetic)
        if recipe.data.subset is not None:
            aux_data = {s: ds.select(range(min(recipe.data.subset, len(ds)))) for s, ds in aux_data.items()}
        self.stores = [RegionStore(prepared_dir(recipe.dataset, recipe.data.synthetic)),
                       RegionStore(prepared_dir(cfg.aux_dataset, recipe.data.synthetic))]
        for store in self.stores:
            if (store.num_regions, store.feature_dim) != (cfg.num_regions, cfg.region_dim):
                raise DataError(f"{store.path}: features are {store.num_regions}×{store.feature_dim}, the recipe expects "
                                f"model.num_regions×model.region_dim = {cfg.num_regions}×{cfg.region_dim}")
        self.examples = {"train": self._encode(self.data["train"], MAIN)}
        self.aux_train = self._encode(aux_data["train"], AUX)
        self._aux_counts = {}
        for split in ("dev", "test"):
            main = self._encode(self.data[split], MAIN)
            self.examples[split] = main + self._encode(aux_data[split], AUX, offset=len(main))
            self._aux_counts[split] = len(self.examples[split]) - len(main)

    def examples_note(self) -> str | None:
        aux = self.config.aux_dataset
        counts = ", ".join(f"{split} {n}" for split, n in self._aux_counts.items())
        return (f"dev and test also hold the {aux} examples of that split ({counts}; their predictions have source "
                f"'itm'), on which the relevance/alignment metrics are computed; the data manifest counts "
                f"{self.recipe.dataset} only, and accuracy/F1 are over its examples")

    def _encode(self, rows, source: int, offset: int = 0) -> list[dict]:
        cfg, store = self.config, self.stores[source]
        sentences = [r["sentence"].lower() if cfg.lowercase else r["sentence"] for r in rows]
        targets = [r["target"].lower() if cfg.lowercase else r["target"] for r in rows]
        # T' = the context with $T$ in the target's place, paired with the target (§4.1)
        ids = self.tokenizer(sentences, targets, truncation=True, max_length=cfg.max_length)["input_ids"]
        examples = []
        for i, row in enumerate(rows):
            feature_row = store.index(row["iid"])
            related = row["relation"] == 1
            example = {"index": offset + i, "id": row["id"], "source": source, "input_ids": ids[i], "label": int(row["label"]),
                       "relation": int(row["relation"]), "feature_row": feature_row}
            if source == AUX:
                proposals = np.asarray(store.boxes[feature_row])
                example["alignment"] = alignment_target(proposals, row["boxes"], related, cfg.iou_threshold,
                                                        cfg.iou_inclusive, cfg.gt_boxes == "first")
                # released code's grounding check: IoU of the first GT box with each proposal
                example["first_box_iou"] = box_iou(proposals, np.asarray(row["boxes"][:1]))[:, 0] if related and row["boxes"] else None
            examples.append(example)
        return examples

    def _regions(self, examples: list[dict]) -> torch.Tensor:
        feats = np.stack([self.stores[e["source"]].features[e["feature_row"]] for e in examples]).astype(np.float32)
        if self.config.feature_norm == "frobenius":  # released code: divide by the norm of the whole 100×2048 matrix
            feats = feats / np.maximum(np.sqrt((feats**2).sum(axis=(1, 2), keepdims=True)), 1e-12)
        return torch.from_numpy(feats)

    def collate(self, examples: list[dict]) -> dict:
        length = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), length), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(examples), length), dtype=torch.long)
        for row, example in enumerate(examples):
            ids[row, : len(example["input_ids"])] = torch.tensor(example["input_ids"])
            mask[row, : len(example["input_ids"])] = 1
        zeros = np.zeros(self.config.num_regions, dtype=np.float32)
        device = self.ctx.device
        return {
            "input_ids": ids.to(device), "attention_mask": mask.to(device), "regions": self._regions(examples).to(device),
            "labels": torch.tensor([e["label"] for e in examples], device=device),
            "relation": torch.tensor([e["relation"] for e in examples], device=device),
            "alignment": torch.from_numpy(np.stack([e.get("alignment", zeros) for e in examples])).to(device),
            "examples": examples, "index": [e["index"] for e in examples],
        }

    # -- alternation schedule (eq 10) ------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        return len(epoch_batches(len(self.examples["train"]), self.recipe.train.batch_size, 0, 0, False, self.recipe.train.drop_last))

    def aux_plan(self, epoch: int, steps: int) -> list[list[int]]:
        """The aux batch for each of this epoch's `steps` main batches. `replay_first_pass`: the
        released code's `zip(cycle(VG_loader), SA_loader)`, which replays the first pass's batches;
        `reshuffle`: every pass over the ITM set is a fresh shuffle."""
        train, n = self.recipe.train, len(self.aux_train)
        seed = self.ctx.seed + 7919  # its own stream, so main and aux orders are independent
        plan, passes = [], 0
        while len(plan) < steps:
            order_epoch = epoch if self.config.aux_cycle == "replay_first_pass" else epoch * 1000 + passes
            plan += epoch_batches(n, train.batch_size, seed, order_epoch, train.shuffle)
            passes += 1
        return plan[:steps]

    def aux_active(self) -> bool:
        cfg = self.config
        return (cfg.coarse_matching and cfg.lambda_relevance > 0) or (cfg.fine_matching and cfg.lambda_alignment > 0)

    def train_batches(self, epoch: int):
        train = self.recipe.train
        main_plan = epoch_batches(len(self.examples["train"]), train.batch_size, self.ctx.seed, epoch, train.shuffle, train.drop_last)
        aux_plan = self.aux_plan(epoch, len(main_plan))
        for main, aux in zip(main_plan, aux_plan):
            main, aux = rank_slice(main, self.ctx.world), rank_slice(aux, self.ctx.world)
            yield {"aux": self.collate([self.aux_train[i] for i in aux]) if self.aux_active() and aux else None,
                   "main": self.collate([self.examples["train"][i] for i in main])}

    # -- model ----------------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        return ITMNetwork(self.encoder, self.config)

    @staticmethod
    def _forward(model, batch):
        return model(batch["input_ids"], batch["attention_mask"], batch["regions"])

    def aux_loss(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        cfg, logs, loss = self.config, {}, None
        if cfg.coarse_matching and cfg.lambda_relevance > 0:
            l_re = relevance_loss(out["relevance_logits"], batch["relation"], cfg.relevance_head)  # eq 3
            loss, logs["loss_re"] = cfg.lambda_relevance * l_re, l_re.item()
        if cfg.fine_matching and cfg.lambda_alignment > 0:
            l_att = alignment_loss(out["alignment"], batch["alignment"], batch["relation"], cfg.kl_normaliser)  # eq 6
            loss = cfg.lambda_alignment * l_att if loss is None else loss + cfg.lambda_alignment * l_att
            logs["loss_att"] = l_att.item()
        return loss, logs  # eq 10: λ1·L_RE + λ2·L_ATT (the aux half of J)

    def train_step(self, model, batch, step: StepControl) -> dict[str, float]:
        logs: dict[str, float] = {}
        if batch["aux"] is not None:
            with step.autocast():
                out = self._forward(model, batch["aux"])
            loss, logs = self.aux_loss(out, batch["aux"])
            step.backward(loss)
            step.optimizer_step("aux")
        with step.autocast():
            out = self._forward(model, batch["main"])
        loss = sentiment_loss(out["logits"], batch["main"]["labels"])  # eq 9, the main half of J
        step.backward(loss)
        step.optimizer_step("main")
        return {"loss": loss.item(), **logs}

    # -- evaluation -----------------------------------------------------------------------------
    def predict(self, model, batch) -> list[dict]:
        out = self._forward(model, batch)
        preds = out["logits"].float().argmax(-1).tolist()
        records = []
        for row, example in enumerate(batch["examples"]):
            record = {"index": example["index"], "source": "itm" if example["source"] == AUX else "tmsc",
                      "label": example["label"], "pred": preds[row]}
            if example["source"] == AUX:
                record["relation"] = example["relation"]
                if "relevance_prob" in out:
                    record["relevance_prob"] = float(out["relevance_prob"][row])
                if "alignment" in out:
                    dist = out["alignment"][row].float().cpu().numpy()
                    record["top5"] = np.argsort(-dist, kind="stable")[:5].tolist()
                    if example["alignment"].sum() > 0:
                        record.update(alignment_example(example["alignment"], dist))
                    if example["first_box_iou"] is not None:
                        record["top1_iou"] = float(example["first_box_iou"][record["top5"][0]])
            records.append(record)
        return records

    def metrics(self, predictions: list[dict], split: str) -> dict[str, float]:
        main = [p for p in predictions if p["source"] == "tmsc"]
        aux = [p for p in predictions if p["source"] == "itm"]
        result = classification_metrics([p["label"] for p in main], [p["pred"] for p in main], self.config.num_labels)
        if aux and "relevance_prob" in aux[0]:  # Table 4
            result.update(relevance_metrics([p["relation"] for p in aux], [int(p["relevance_prob"] > 0.5) for p in aux]))
        if aux and "top5" in aux[0]:  # Table 5 (+ the released code's IoU≥0.5 grounding accuracy)
            result.update(alignment_metrics([p for p in aux if "kl" in p]))
            every_related = self.config.grounding_denominator == "related"
            grounded = [p.get("top1_iou", 0.0) >= 0.5 for p in aux
                        if "top1_iou" in p or (every_related and "top5" in p and p["relation"] == 1)]
            if grounded:
                result["grounding_accuracy"] = 100.0 * float(np.mean(grounded))
        return result
