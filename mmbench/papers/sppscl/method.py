"""SPP-SCL (Wu & Li, AAAI-26): semi-push-pull supervised contrastive learning for image-text
sentiment (MVSA-Single/-Multiple) and sarcasm (HFM) detection.

Frozen ResNet-50 + BERT features (cached once, memory-mapped) → image branch (eq 1), Hierarchical
Attention text branch (eq 2), Cross-Modal Fusion (eq 3) → classifier. Training follows Algorithm 1:
step 1 optimises λ·L_ce + L_cli + L_clt (eqs 4, 5, 7); a second forward pass then checks the
image-text alignment and, when it is poor, a separate step optimises L_clm (eq 6).

Batch-level fusion: CMF attends across the batch, so a prediction depends on its batch. Evaluation
therefore uses fixed batches in file order on one process, of the training batch size (the released
valid() shares cfg.batch_size with training); a recipe that sets another `train.eval_batch_size` is an
error (`eval_batch_size`).

Logged per step (averaged per epoch into log.jsonl and metrics.json's final_train): `inter_step_fraction`
(1 when Algorithm 1's L_clm step ran), the condition's c / B² and α·c_mask / B², and the step-1 batch's
IID/TTD/ITD; `sppscl_trace.jsonl` keeps each step's row (Figure 4's distances during training).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmbench.data.collate import pad_sequences
from mmbench.engine.method import Method, StepControl
from mmbench.errors import RecipeError
from mmbench.papers.sppscl import features as feats
from mmbench.papers.sppscl.losses import at_least_fp32, alignment_check, inter_supcon, intra_supcon, sentiment_distances, total_loss
from mmbench.papers.sppscl.model import SPPSCLHeads, SPPSCLNet
from mmbench.metrics.classification import classification_metrics


class SPPSCLConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text_encoder: str = "bert-base-uncased"
    image_encoder: str = "resnet50"
    image_weights: str | None = None  # a local torchvision state dict for resnet*
    modality: Literal["both", "text", "image"] = "both"  # text / image: Table 3's unimodal rows
    max_length: int = 200  # word tokens N; the tokenizer adds [CLS] and [SEP]
    image_resize: int = 256
    image_crop: int = 224
    encoder_layers: int = 4  # last BERT layers extracted (and cached)
    ha_layers: int = 4  # last layers the Hierarchical Attention uses (Table 6: 1-4)
    ha_mlp_layers: int = 1
    branch_width: int = 128
    embed_dim: int = 32  # D
    lstm_hidden: int = 64
    classifier_hidden: int = 64
    dropout: float = 0.2
    fusion: Literal["cmf", "concat"] = "cmf"  # concat: Table 7 "w/o CMF"
    num_outputs: int | None = None  # None: the dataset's label count (released code: 3 for HFM too)
    lambda_ce: float = 5.0  # λ
    temperature: float = 0.07  # τ
    alpha: float = 2 / 3  # α
    use_intra: bool = True  # L_cli + L_clt (Table 5)
    use_inter: bool = True  # L_clm, with Algorithm 1's second forward pass and check
    # weight of L_clm (eq 7 weighs it 1). 0: Table 5's "w/o L_clm" that removes the loss only: the second
    # forward pass (train-mode BatchNorm statistics, dropout draws) and the check still run, no L_clm update
    lambda_clm: float = Field(default=1.0, ge=0.0)
    two_step: bool = True  # Algorithm 1; False = one step with all losses (Table 4)
    supcon_normaliser: Literal["positives", "batch"] = "positives"  # 1/|P(i)| (Khosla et al.) or eq 4's 1/B
    supcon_self_in_denominator: bool = False
    inter_anchor: Literal["image", "text"] = "image"
    inter_pair: Literal["positive", "excluded", "negative"] = "positive"  # eq 6's matched pair (losses.py)
    condition_similarity: Literal["sigmoid_dot", "cosine"] = "sigmoid_dot"  # Algorithm 1's undefined "sim"
    condition_count_self_pairs: bool = False
    condition_floor: bool = False
    token_slice: Literal["words", "padded"] = "words"
    token_mean: Literal["masked", "all"] = "masked"
    encoders_train_mode: bool = False
    # released code (torch 1.8.1): zero_grad() leaves zero tensors, so the L_clm step's AdamW update also moves
    # the classifier/fusion weights (momentum, weight decay); False: those get no gradient and stay put
    zero_grads_in_inter_step: bool = False
    # 0: BERT frozen (§Methodology "kept fixed"; what a cache of layers 9-12 implies); 4: the other
    # reading of §Text Encoder, "fine-tuning only the last four transformer layers (9-12)" (live encoders)
    text_trained_layers: int = Field(default=0, ge=0)
    trace: bool = True  # <run dir>/sppscl_trace.jsonl: Algorithm 1's check and IID/TTD/ITD per step
    feature_cache: bool = True
    cache_dtype: Literal["float16", "float32"] = "float16"
    image_errors: Literal["error", "load_truncated", "blank"] = "error"

    @model_validator(mode="after")
    def _consistent(self):
        if self.feature_cache and (self.encoders_train_mode or self.token_slice == "padded"):
            raise ValueError("feature_cache needs deterministic encoder outputs over the word tokens: set "
                             "model.feature_cache=false with encoders_train_mode=true or token_slice=padded")
        if self.text_trained_layers and (self.feature_cache or self.modality == "image"):
            raise ValueError(f"text_trained_layers={self.text_trained_layers} trains BERT layers: set model.feature_cache=false "
                             "(no cache above the frozen layers) and a text modality")
        if not 1 <= self.ha_layers <= self.encoder_layers:
            raise ValueError(f"ha_layers={self.ha_layers} must be in 1..encoder_layers={self.encoder_layers}")
        return self


TRACE_FILE = "sppscl_trace.jsonl"


def eval_batch_size(train) -> int:
    """The evaluation batch size: the training one. CMF attends across the batch, so a prediction depends
    on its companions and on the batch size the fusion was trained at (logits move ~0.08 on the smoke
    model at 64 instead of 32)."""
    if train.eval_batch_size not in (None, train.batch_size):
        raise RecipeError(f"train.eval_batch_size={train.eval_batch_size}: sppscl evaluates with the training batch size "
                          f"(train.batch_size={train.batch_size}; Cross-Modal Fusion attends across the batch); leave it unset")
    return train.batch_size


class SPPSCL(Method):
    Config = SPPSCLConfig
    # CMF mixes the samples of a batch: DDP would change what each prediction sees
    supports_ddp = False

    # -- data ---------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.config
        eval_batch_size(self.recipe.train)  # a wrong evaluation batch fails before any feature is computed
        self.uses_text, self.uses_image = cfg.modality != "image", cfg.modality != "text"
        self.n_labels = len(self.manifest["label_names"])
        text_model = image_model = None
        if self.uses_text:
            text_model, self.tokenizer = feats.load_text_encoder_4l(cfg.text_encoder)
            text_model.eval()
        if self.uses_image:
            image_model = feats.load_image_encoder(cfg.image_encoder, cfg.image_weights).eval()
            self.transform = feats.image_transform(cfg.image_resize, cfg.image_crop)
            self.images_root = Path(self.recipe.data.images or self.manifest["images_root"])
        self.extractor = feats.FrozenExtractor(text_model, image_model, cfg.encoder_layers).to(self.ctx.device)
        self.extractor.requires_grad_(False)
        self.examples, self.store = {}, {}
        for split in ("train", "dev", "test"):
            rows = [dict(r) for r in self.data[split]]
            examples = [{"index": i, "label": int(r["label"]), "image_id": r["image_id"]} for i, r in enumerate(rows)]
            if self.uses_text:
                encoded = self.tokenizer([r["text"] for r in rows], truncation=True, max_length=cfg.max_length + 2)["input_ids"]
                for example, ids in zip(examples, encoded):
                    example["input_ids"] = ids
            self.examples[split] = examples
            if cfg.feature_cache:
                self.store[split] = self._cached_features(split, rows, examples)
        self.image_channels = self._probe_channels() if self.uses_image else 0
        self._record_cache()

    def _record_cache(self) -> None:
        """run_dir/feature_cache.json: which caches were read and how many images the policy blanked."""
        if self.ctx.run_dir is None or not self.ctx.world.is_main or not self.store:
            return
        from mmbench.results.store import atomic_write_json

        atomic_write_json(self.ctx.run_dir / "feature_cache.json", {
            split: {"blanked_images": store.get("blanked_images"), "text_tokens": int(store["offsets"][-1]) if "offsets" in store else None}
            for split, store in self.store.items()})

    def _cache_key(self, split: str, rows: list[dict], kind: str, encoder) -> dict:
        cfg = self.config
        key = {"version": feats.FEATURE_VERSION, "kind": kind, "dataset": self.recipe.dataset, "split": split,
               "synthetic": self.recipe.data.synthetic, "raw_files": self.manifest.get("raw_files"),
               "rows": feats.rows_digest(rows), "weights": feats.weights_digest(encoder), "dtype": cfg.cache_dtype}
        if kind == "text":
            key.update(encoder=cfg.text_encoder, tokenizer=feats.tokenizer_digest(self.tokenizer), max_length=cfg.max_length,
                       layers=cfg.encoder_layers)
        else:
            key.update(encoder=cfg.image_encoder, resize=cfg.image_resize, crop=cfg.image_crop, mean=feats.IMAGENET_MEAN,
                       std=feats.IMAGENET_STD, missing=self.recipe.data.missing_image, errors=cfg.image_errors,
                       images_root=str(self.images_root.resolve()), images=feats.images_fingerprint(self.images_root, rows))
        return key

    def _cached_features(self, split: str, rows: list[dict], examples: list[dict]) -> dict:
        cfg, device, store = self.config, self.ctx.device, {}
        if self.uses_text:
            key = self._cache_key(split, rows, "text", self.extractor.text_model)
            hidden = self.extractor.text_model.config.hidden_size
            store["states"], store["offsets"] = feats.text_cache(
                key, [len(e["input_ids"]) for e in examples], hidden, cfg.encoder_layers, cfg.cache_dtype, self.extractor,
                examples, device)
        if self.uses_image:
            key = self._cache_key(split, rows, "image", self.extractor.image_model)
            ids = [e["image_id"] for e in examples]
            store.update(feats.image_cache(key, len(ids), self._probe_shape(), cfg.cache_dtype, self.extractor,
                                           lambda a, b: self._pixels(ids[a:b]), device))
            store["blanked_images"] = int((store["ok"] == 0).sum())
        return store

    def _pixels(self, image_ids: list[str]):
        return feats.pixel_batch(self.images_root, image_ids, self.transform, self.config.image_crop,
                                 self.recipe.data.missing_image, self.config.image_errors)

    def _probe_shape(self) -> tuple:
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.config.image_crop, self.config.image_crop, device=self.ctx.device)
            return tuple(self.extractor.image_model(probe).shape[1:])

    def _probe_channels(self) -> int:
        return self._probe_shape()[0]

    def collate(self, examples: list[dict], split: str = "train") -> dict:
        device, cfg = self.ctx.device, self.config
        batch = {"index": [e["index"] for e in examples],
                 "labels": torch.tensor([e["label"] for e in examples], device=device)}
        if cfg.feature_cache:
            batch["features"] = self._features_from_cache(examples, self.store[split])
            return batch
        if self.uses_text:
            ids = [e["input_ids"] for e in examples]
            length = cfg.max_length + 2 if cfg.token_slice == "padded" else None  # released code pads to 202
            input_ids, mask = pad_sequences(ids, self.tokenizer.pad_token_id, length)
            word = torch.zeros_like(mask)
            for i, s in enumerate(ids):
                word[i, 1 : (len(word[i]) - 1 if cfg.token_slice == "padded" else len(s) - 1)] = 1
            batch.update(input_ids=input_ids.to(device), attention_mask=mask.to(device), word_mask=word.to(device))
        if self.uses_image:
            batch["pixels"] = self._pixels([e["image_id"] for e in examples])[0].to(device)
        return batch

    def _features_from_cache(self, examples: list[dict], store: dict) -> dict:
        device, out = self.ctx.device, {}
        rows = [e["index"] for e in examples]
        if self.uses_text:
            k = self.config.ha_layers
            states, offsets = store["states"], store["offsets"]
            lengths = [len(e["input_ids"]) - 2 for e in examples]  # word tokens, [CLS]/[SEP] excluded
            hidden = states.shape[-1]
            tokens = np.zeros((len(rows), k, max(1, max(lengths)), hidden), dtype=np.float32)
            mask = np.zeros((len(rows), tokens.shape[2]), dtype=np.float32)
            cls = np.stack([states[offsets[r], -k:] for r in rows]).astype(np.float32)
            for i, (r, n) in enumerate(zip(rows, lengths)):
                tokens[i, :, :n] = states[offsets[r] + 1 : offsets[r] + 1 + n, -k:].transpose(1, 0, 2)
                mask[i, :n] = 1
            out.update(cls=torch.from_numpy(cls).to(device), tokens=torch.from_numpy(tokens).to(device),
                       token_mask=torch.from_numpy(mask).to(device))
        if self.uses_image:
            order = np.asarray(rows)
            out["image_map"] = torch.from_numpy(np.asarray(store["map"][order], dtype=np.float32)).to(device)
        return out

    def eval_batches(self, split: str):
        """Fixed batches in file order (CMF is batch-level), never sharded."""
        size = eval_batch_size(self.recipe.train)
        examples = self.examples[split]
        for start in range(0, len(examples), size):
            yield self.collate(examples[start : start + size], split)

    # -- model -----------------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        cfg = self.config
        text_hidden = self.extractor.text_model.config.hidden_size if self.uses_text else 0
        heads = SPPSCLHeads(
            modality=cfg.modality, fusion=cfg.fusion, image_channels=self.image_channels, text_hidden=text_hidden,
            layers=cfg.ha_layers, num_outputs=cfg.num_outputs or self.n_labels, branch_width=cfg.branch_width,
            dim=cfg.embed_dim, lstm_hidden=cfg.lstm_hidden, classifier_hidden=cfg.classifier_hidden, dropout=cfg.dropout,
            ha_mlp_layers=cfg.ha_mlp_layers, packed=cfg.token_slice == "words", masked_mean=cfg.token_mean == "masked")
        extractor = None if cfg.feature_cache else _LastLayers(self.extractor, cfg.ha_layers)
        trained = feats.last_text_layers(self.extractor.text_model, cfg.text_trained_layers) if cfg.text_trained_layers else None
        return SPPSCLNet(heads, extractor, cfg.encoders_train_mode, trained)

    def parameters_for(self, model, optimizer_name):
        # the heads, plus BERT's last `text_trained_layers` layers when that reading is chosen
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    # -- training ----------------------------------------------------------------------------------
    def _intra(self, out: dict, labels) -> tuple:
        cfg = self.config
        if not cfg.use_intra or cfg.modality != "both":
            return None, None
        kw = dict(temperature=cfg.temperature, normaliser=cfg.supcon_normaliser, self_in_denominator=cfg.supcon_self_in_denominator)
        return intra_supcon(out["image"], labels, **kw), intra_supcon(out["text"], labels, **kw)  # eqs (4), (5)

    def _inter(self, out: dict, labels):
        cfg = self.config
        return inter_supcon(out["image"], out["text"], labels, cfg.temperature, cfg.supcon_normaliser,  # eq (6)
                            cfg.inter_pair, cfg.inter_anchor)

    def train_step(self, model, batch, step: StepControl) -> dict[str, float]:
        cfg, labels = self.config, batch["labels"]
        with step.autocast():
            out = model(batch)
        ce = F.cross_entropy(at_least_fp32(out["logits"]), labels)
        l_cli, l_clt = self._intra(out, labels)
        inter_now = cfg.use_inter and cfg.modality == "both" and not cfg.two_step
        l_clm = self._inter(out, labels) if inter_now and cfg.lambda_clm > 0 else None  # Table 4 "one-step": every loss at once
        l_clm = None if l_clm is None else cfg.lambda_clm * l_clm
        loss = total_loss(ce, cfg.lambda_ce, l_cli, l_clt, l_clm)  # eq (7) / Algorithm 1 line 4
        step.backward(loss)
        # the schedule advances after the whole iteration: Algorithm 1's second update uses this step's lr
        step.optimizer_step("main", advance_schedule=False)
        logs = {"loss": loss.item(), "ce": ce.item()}
        if cfg.use_inter and cfg.modality == "both" and cfg.two_step:
            with step.autocast():
                out2 = model(batch)  # Algorithm 1 line 7: embeddings again, after the update
            check = alignment_check(out2["image"], out2["text"], labels, cfg.alpha, cfg.condition_similarity,
                                    cfg.condition_count_self_pairs, cfg.condition_floor)
            if check["run"] and cfg.lambda_clm > 0:  # lines 12-14
                l_clm = cfg.lambda_clm * self._inter(out2, labels)
                step.backward(l_clm)
                if cfg.zero_grads_in_inter_step:
                    for group in step.optimizers["main"].param_groups:
                        for p in group["params"]:
                            if p.grad is None:
                                p.grad = torch.zeros_like(p)
                step.optimizer_step("main", advance_schedule=False)  # Algorithm 1's second update
                logs["l_clm"] = l_clm.item()
            # averaged over the epoch's steps: the fraction of steps on which L_clm ran (→ metrics.json final_train)
            logs["inter_step_fraction"] = float(check["run"])
            n = len(labels)
            logs["inter_count_ratio"] = check["count"] / n**2  # c / B², against α·c_mask / B²
            logs["inter_threshold_ratio"] = check["threshold"] / n**2
            distances = sentiment_distances(out2["image"].detach(), out2["text"].detach(), labels)
            logs.update({f"train_{k}": v for k, v in distances.items() if v == v})  # Figure 4's distances, train batch
            self._trace(step, check, distances)
        step.schedulers["main"].step()
        return logs

    # -- Figure 4 trace -------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        self._batch_in_epoch = 0

    def _trace(self, step: StepControl, check: dict, distances: dict) -> None:
        """One row per step: Algorithm 1's check on the step-1 embeddings and their IID/TTD/ITD."""
        run_dir, batch = self.ctx.run_dir, getattr(self, "_batch_in_epoch", 0)
        self._batch_in_epoch = batch + 1
        if not self.config.trace or run_dir is None or not self.ctx.world.is_main:
            return
        path = Path(run_dir) / TRACE_FILE
        if not getattr(self, "_trace_started", False):  # a resumed run drops the rows of the epochs it redoes
            from mmbench.results import store

            store.write_jsonl(path, [r for r in store.read_jsonl(path) if r["epoch"] < step.epoch])
            self._trace_started = True
        row = {"epoch": step.epoch, "batch": batch, "global_step": step.global_step, "inter_step": check["run"],
               "count": check["count"], "threshold": check["threshold"], **distances}
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    # -- evaluation --------------------------------------------------------------------------------
    def predict(self, model, batch) -> list[dict]:
        out = model(batch)
        preds = out["logits"].float().argmax(-1).tolist()
        rows = []
        for i, (index, label, pred) in enumerate(zip(batch["index"], batch["labels"].tolist(), preds)):
            row = {"index": index, "label": int(label), "pred": int(pred)}
            if self.config.modality == "both":  # embeddings for Figure 4's distances
                row["image_emb"] = [round(v, 5) for v in out["image"][i].float().tolist()]
                row["text_emb"] = [round(v, 5) for v in out["text"][i].float().tolist()]
            rows.append(row)
        return rows

    def metrics(self, predictions: list[dict], split: str) -> dict[str, float]:
        labels = [p["label"] for p in predictions]
        result = classification_metrics(labels, [p["pred"] for p in predictions], self.n_labels)
        if predictions and "image_emb" in predictions[0]:
            distances = sentiment_distances(torch.tensor([p["image_emb"] for p in predictions]),
                                            torch.tensor([p["text_emb"] for p in predictions]), torch.tensor(labels))
            result.update(distances)
        return result


class _LastLayers(torch.nn.Module):
    """Live features restricted to the last `ha_layers` layers (the cache path slices the same way)."""

    def __init__(self, extractor, k: int):
        super().__init__()
        self.inner, self.k = extractor, k

    def forward(self, batch):
        features = self.inner(batch)
        if "cls" in features:
            features["cls"], features["tokens"] = features["cls"][:, -self.k:], features["tokens"][:, -self.k:]
        return features
