"""CMCS: Cross-Modal Causal Scheduling (Zhao, Li, Wang, Liao; ECML-PKDD 2025), from the paper alone.

Training (Algorithm 1): every batch is a lower-level step on θ (BERT, MFS, classifiers; CLIP vision
by recipe) with the scheduling weights φ fixed (eq 12); after every H lower steps, one upper-level
step on φ = {α, β} with the implicit gradient of the scheduled dev loss (eqs 10, 13, 14), computed on
a batch of a small fixed subset of the dev split (D_dev) by K Hessian-vector products.
Inference fuses the text and image predictions with a CLIP prompt similarity (eq 15).

Ablation switches (Table 2): `use_visual` (w/o visual modality), `use_cms` (w/o CMS: φ = 1, no
upper level), `use_mfs` (w/o MFS: masks fixed at `fixed_mask_value`).
Per-batch causal effects and weights go to <run dir>/cmcs_trace.jsonl (Figure 4; see figure4.py).
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from pydantic import BaseModel, ConfigDict, Field

from mmbench.data.image_store import ImageStore
from mmbench.data.images import load_rgb, resolve_image, safe_image_path
from mmbench.encoders.text import load_text_encoder
from mmbench.data.collate import pad_sequences
from mmbench.engine.method import Method, StepControl
from mmbench.papers.cmcs.clip import load_clip
from mmbench.papers.cmcs.model import CMCSModel, fuse_predictions, scheduled_loss
from mmbench.metrics.classification import classification_metrics
from mmbench.papers.cmcs.hypergrad import implicit_hypergradient
from mmbench.results import store

TRACE_FILE = "cmcs_trace.jsonl"
TRACE_KEYS = ("text_effect", "text_log_effect", "text_weight", "text_step_multiplier", "image_effect", "image_log_effect",
              "image_weight", "image_step_multiplier", "hypergrad_alpha", "hypergrad_beta", "hypergrad_norm",
              "neumann_gamma", "hessian_lambda_max", "hessian_lambda_min", "neumann_damping", "hypergrad_skipped",
              "hypergrad_clipped")
CLIPPED_WARNING = 0.10  # share of an epoch's upper steps whose raw ∇φ the engine clipped: above it, warn


class CMCSConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text_encoder: str = "bert-large-uncased"  # Φ_t; "hidden sizes of BERT and CLIP are both 1024" (§4.1)
    image_encoder: str = "openai/clip-vit-large-patch14"  # Φ_v (vision tower, 1024) and Φ_p (text tower)
    max_length: int = 128
    sentence_form: Literal["keep_placeholder", "substitute"] = "keep_placeholder"
    dropout: float = 0.1
    num_labels: int = 3
    # Table 2 ablation switches
    use_visual: bool = True
    use_cms: bool = True
    use_mfs: bool = True
    fixed_mask_value: float = 0.5
    train_image_encoder: bool = False
    # causal scheduler and bi-level optimisation (§3.3-3.4)
    init_alpha: float = 1.0
    init_beta: float = 1.0
    effect_clamp: float | None = 10.0
    upper_every: int = Field(10, ge=1)  # H
    neumann_terms: int = Field(9, ge=0)  # K: K + 1 = H terms make the series the H-step unrolled derivative
    # γ of eq 14: "lr" = the lower learning rate η1 (Lorraine et al.'s series, see hypergrad.py), "power" =
    # 1/λ̂_max by power iteration, "fixed" = `neumann_scale`
    neumann_scaling: Literal["lr", "power", "fixed"] = "lr"
    neumann_scale: float = Field(1.0, gt=0)  # γ of γΣ(I-γH)^j when fixed; eq 14 as printed is γ = 1
    power_iterations: int = Field(8, ge=1)
    # an indefinite Hessian (far from a minimum) makes eq 14 diverge: "min_eigen" damps it (hypergrad.py)
    neumann_damping: Literal["none", "min_eigen"] = "none"
    # how φ enters the lower update: "step" = per-modality learning-rate multiplier after clipping and
    # AdamW's normalisation (the eq-12 SGD step's meaning); "loss" = inside the loss as eq 9 prints it
    phi_application: Literal["step", "loss"] = "step"
    phi_mean_decay: float = Field(0.99, ge=0, lt=1)  # running mean of φ that normalises the multipliers
    hypergrad_params: Literal["all", "heads"] = "all"  # θ in the Hessian: everything trained, or MFS + heads
    dev_subset_size: int = Field(128, ge=1)
    dev_batch_size: int = Field(32, ge=1)
    # inference fusion (§3.5, eq 15)
    # θ of eq 15: cos(CLIP image, CLIP text(prompt)) ("clip_image"), or the text-text reading of the
    # printed formula, cos(E^t, E^p), with CLIP's text tower ("clip") or BERT ("bert")
    fusion_encoder: Literal["clip_image", "clip", "bert"] = "clip_image"
    prompt_template: str = "it's a picture of with a target of {target}"
    clip_max_length: int = 77
    trace: bool = True


def image_targets(rows) -> list[list[float]]:
    """y^v of eq 6: the multi-hot (negative, neutral, positive) over every target sharing the image
    and the tweet text (the sentence with its target put back), e.g. neutral + positive → (0, 1, 1)."""
    def key(row):
        return row["image_id"], row["sentence"].replace("$T$", row["target"])

    groups: dict[tuple, set[int]] = defaultdict(set)
    for row in rows:
        groups[key(row)].add(int(row["label"]))
    return [[1.0 if c in groups[key(row)] else 0.0 for c in range(3)] for row in rows]


class CMCS(Method):
    Config = CMCSConfig
    optimizer_names = ("main", "meta")  # main: θ (η1); meta: φ = {α, β} (η2, plain SGD in Algorithm 1)
    supports_ddp = False  # the hyper-gradient is computed on one process's batches

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._upper_counts = {"steps": 0, "clipped": 0}  # this epoch's upper steps, and how many were clipped

    # -- data -----------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.config
        self.encoder, self.tokenizer = load_text_encoder(cfg.text_encoder)
        self.clip = None
        if cfg.use_visual:
            self.clip, self.image_processor, self.clip_tokenizer = load_clip(cfg.image_encoder)
            self.images_root = Path(self.recipe.data.images or self.manifest["images_root"])
        self.examples = {split: self._encode(self.data[split]) for split in ("train", "dev", "test")}
        # every image decoded and resized once into a content-keyed uint8 memmap (mmbench.data.image_store)
        paths = [e.get("image_path") for split in self.examples.values() for e in split]
        self.pixel_store = ImageStore.open(paths, self.image_processor) if any(paths) else None
        rng = random.Random(self.ctx.seed)
        dev = list(range(len(self.examples["dev"])))
        self.dev_subset = sorted(rng.sample(dev, min(cfg.dev_subset_size, len(dev))))  # D_dev ⊂ D_v (§3.4)
        self._batch_in_epoch = 0
        self._trace_started = False

    def _pair(self, row: dict) -> tuple[str, str]:
        sentence = row["sentence"]
        if self.config.sentence_form == "substitute":
            sentence = sentence.replace("$T$", row["target"])
        return sentence, row["target"]

    def _encode(self, rows) -> list[dict]:
        cfg = self.config
        rows = list(rows)
        pairs = [self._pair(r) for r in rows]
        enc = self.tokenizer([s for s, _ in pairs], [t for _, t in pairs], truncation=True, max_length=cfg.max_length)
        prompts = [cfg.prompt_template.format(target=r["target"]) for r in rows]
        examples = [{"index": i, "label": int(r["label"]), "input_ids": enc["input_ids"][i],
                     "token_type_ids": enc["token_type_ids"][i] if "token_type_ids" in enc else None}
                    for i, r in enumerate(rows)]
        if cfg.fusion_encoder == "bert":
            prompt_ids = self.tokenizer(prompts, truncation=True, max_length=cfg.max_length)["input_ids"]
            for example, ids in zip(examples, prompt_ids):
                example["bert_prompt_ids"] = ids
        if self.clip is None:
            return examples
        targets = image_targets(rows)
        for example, row, target in zip(examples, rows, targets):
            example["image_path"] = self._image_path(row["image_id"])
            example["image_target"] = target
        if cfg.fusion_encoder in ("clip", "clip_image"):
            sentences = [r["sentence"].replace("$T$", r["target"]) for r in rows]
            tok = self.clip_tokenizer
            sent_ids = tok(sentences, truncation=True, max_length=cfg.clip_max_length)["input_ids"]
            prompt_ids = tok(prompts, truncation=True, max_length=cfg.clip_max_length)["input_ids"]
            for example, s, p in zip(examples, sent_ids, prompt_ids):
                example["clip_sentence_ids"], example["clip_prompt_ids"] = s, p
        return examples

    def _image_path(self, image_id: str) -> str | None:
        """Resolved once at setup so a missing image fails before training (data.missing_image policy)."""
        data = self.recipe.data
        if data.missing_image == "blank" and not safe_image_path(self.images_root, image_id).exists():
            return None
        return str(resolve_image(self.images_root, image_id, data.missing_image, data.substitute_image))

    def _pixels(self, paths: list[str | None]) -> torch.Tensor:
        if self.pixel_store is not None:  # the processor's values, normalised on the device; None: a black image
            return self.pixel_store.batch(paths, self.ctx.device, blank="black")
        from PIL import Image

        images = [load_rgb(Path(p)) if p is not None else Image.new("RGB", (224, 224)) for p in paths]
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]

    def collate(self, examples: list[dict]) -> dict:
        device = self.ctx.device
        ids, mask = pad_sequences([e["input_ids"] for e in examples], self.tokenizer.pad_token_id)
        batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "index": [e["index"] for e in examples],
                 "labels": torch.tensor([e["label"] for e in examples], device=device)}
        if examples[0]["token_type_ids"] is not None:
            batch["token_type_ids"] = pad_sequences([e["token_type_ids"] for e in examples], 0)[0].to(device)
        for key in ("bert_prompt_ids", "clip_sentence_ids", "clip_prompt_ids"):
            if key in examples[0]:
                pad = self.tokenizer.pad_token_id if key.startswith("bert") else self.clip_tokenizer.pad_token_id
                ids, mask = pad_sequences([e[key] for e in examples], pad)
                batch[key], batch[key + "_mask"] = ids.to(device), mask.to(device)
        if self.clip is not None:
            batch["pixel_values"] = self._pixels([e["image_path"] for e in examples]).to(device)
            batch["image_targets"] = torch.tensor([e["image_target"] for e in examples], device=device)
        return batch

    def _dev_batch(self, global_step: int) -> dict:
        """A batch of D_dev for one upper-level step, drawn by (seed, step) so a resumed run matches."""
        rng = random.Random(self.ctx.seed * 1_000_003 + global_step)
        chosen = rng.sample(self.dev_subset, min(self.config.dev_batch_size, len(self.dev_subset)))
        return self.collate([self.examples["dev"][i] for i in chosen])

    # -- model ----------------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        cfg = self.config
        return CMCSModel(self.encoder, self.clip, cfg.num_labels, cfg.dropout,
                         None if cfg.use_mfs else cfg.fixed_mask_value, cfg.train_image_encoder, cfg.init_alpha, cfg.init_beta)

    def parameters_for(self, model, optimizer_name: str):
        is_phi = optimizer_name == "meta"
        return [(n, p) for n, p in model.named_parameters() if n.startswith("scheduler.") == is_phi]

    def _weights(self, model: CMCSModel, out: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """φ_t,b and φ_v,b of this batch (carrying the graph to α, β); all ones without the CMS."""
        image_effect = out.get("image_effect", torch.ones(()))
        if not self.config.use_cms:
            return torch.ones(()), (torch.ones(()) if model.has_image else None)
        text_w, image_w = model.scheduler(out["text_effect"], image_effect.to(out["text_effect"].device))
        return text_w, (image_w if model.has_image else None)

    def train_step(self, model, batch, step: StepControl) -> dict[str, float]:
        with step.autocast():
            out = model(batch, self.config.effect_clamp)
        text_w, image_w = self._weights(model, out)
        text_w = text_w.detach()  # lower level: φ fixed (eq 12)
        image_w = image_w.detach() if image_w is not None else None
        loss = scheduled_loss(text_w, out["text_loss"], image_w, out.get("image_loss"))  # eq (9) for batch b
        logs = {"loss": loss.item(), "text_loss": out["text_loss"].item(), "text_effect": out["text_effect"].item(),
                "text_log_effect": out["text_log_effect"].item(), "text_weight": float(text_w)}
        if model.has_image:
            logs.update(image_loss=out["image_loss"].item(), image_effect=out["image_effect"].item(),
                        image_log_effect=out["image_log_effect"].item(), image_weight=float(image_w))
        if self.config.phi_application == "loss":
            step.backward(loss)  # ∇θL = φ_t ∇θL_t + φ_v ∇θL_v, eq (12), then the engine's clip and AdamW
            step.optimizer_step("main")
        else:
            logs.update(self._scheduled_step(model, out, [float(text_w)] + ([float(image_w)] if model.has_image else []), step))
        if self.config.use_cms and (step.global_step + 1) % self.config.upper_every == 0:
            logs.update(self.upper_step(model, batch, step))
        self._trace(model, step, logs)
        self._batch_in_epoch += 1
        return logs

    def _modality_params(self, model: CMCSModel, step: StepControl) -> list[list[torch.Tensor]]:
        """The main optimiser's parameters split by modality: text (BERT, text MFS, f_t) and image (image
        MFS, f_v, a trained CLIP vision tower). They are disjoint: L_t reaches only the first, L_v only
        the second, which is what lets φ act as a per-modality step size."""
        ids = {id(p) for g in step.optimizers["main"].param_groups for p in g["params"]}
        prefixes = (("text_encoder.", "text_selector.", "text_head."), ("image_selector.", "image_head.", "clip."))
        groups = [[p for n, p in model.named_parameters() if id(p) in ids and n.startswith(pre)] for pre in prefixes]
        assert sum(map(len, groups)) == len(ids), "cmcs: a trained parameter belongs to neither modality"
        return groups if model.has_image else groups[:1]

    def _scheduled_step(self, model: CMCSModel, out: dict, weights: list[float], step: StepControl) -> dict[str, float]:
        """Eq 12 as Algorithm 1's step θ ← θ − η1(φ_t∇L_t + φ_v∇L_v) means it on disjoint parameters:
        φ_m multiplies modality m's step. Under the recipe's clip-then-AdamW, φ inside the loss is erased
        twice (global clipping rescales every batch to norm 1 once φ ≥ 1.3 lifts it above 1, and AdamW
        is invariant to a constant gradient scale per parameter), so the order here is: unweighted
        ∇L_m → clip per modality → AdamW direction → step × φ_m / mean φ (the group lr scaled)."""
        step.backward(out["text_loss"] + out.get("image_loss", 0.0))  # ∇θL_t and ∇θL_v land on disjoint θ
        multipliers = model.scheduler.step_multipliers(weights, self.config.phi_mean_decay)
        optimizer, groups = step.optimizers["main"], self._modality_params(model, step)
        grads = {id(p): p.grad for params in groups for p in params}
        base_lrs = [g["lr"] for g in optimizer.param_groups]
        for params, mult in zip(groups, multipliers):
            mine = {id(p) for p in params}
            for other in groups:
                for p in other:
                    p.grad = grads[id(p)] if id(p) in mine else None  # optimisers skip parameters without grad
            for g, lr in zip(optimizer.param_groups, base_lrs):
                g["lr"] = lr * mult
            step.optimizer_step("main", parameters=params, advance_schedule=False)  # clips this modality only
        for g, lr in zip(optimizer.param_groups, base_lrs):
            g["lr"] = lr
        step.schedulers["main"].step()
        return dict(zip(("text_step_multiplier", "image_step_multiplier"), multipliers))

    def hyper_parameters(self, model: CMCSModel) -> list[torch.Tensor]:
        """θ of eqs 13-14: the parameters the main optimiser trains (or only MFS + heads)."""
        frozen_prefixes = ("scheduler.",) + (("text_encoder.", "clip.") if self.config.hypergrad_params == "heads" else ())
        return [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(frozen_prefixes)]

    def upper_step(self, model: CMCSModel, batch: dict, step: StepControl) -> dict[str, float]:
        """One upper-level update of φ = {α, β} (Algorithm 1 lines 11-12): the outer problem of the
        bi-level eq (11), min_φ L_dev(θ*(φ)), with θ from the H lower steps of eq (12).

        Every forward here runs in fp32 (Hessian-vector products are numerically sensitive) and under
        the math SDPA kernel: the Hessian-vector products differentiate the attention backward, and the
        fused kernels SDPA picks otherwise (flash / memory-efficient on CUDA, flash on CPU without
        dropout) have no double backward."""
        params = self.hyper_parameters(model)
        phi = [model.scheduler.alpha, model.scheduler.beta]
        cfg = self.config
        if cfg.neumann_scaling == "lr":  # γ = η1: the rate the H lower steps just took (after the schedule)
            scale = step.optimizers["main"].param_groups[0]["lr"]
        else:
            scale = None if cfg.neumann_scaling == "power" else cfg.neumann_scale
        with torch.autocast(self.ctx.device.type, enabled=False), sdpa_kernel(SDPBackend.MATH):
            dev_out = model(self._dev_batch(step.global_step), cfg.effect_clamp)
            dev_text_w, dev_image_w = (w.detach() if w is not None else None for w in self._weights(model, dev_out))
            dev_loss = scheduled_loss(dev_text_w, dev_out["text_loss"], dev_image_w, dev_out.get("image_loss"))  # eq (10)
            upper_grad = torch.autograd.grad(dev_loss, params, allow_unused=True)  # ∇θ L_dev
            out = model(batch, cfg.effect_clamp)
            text_w, image_w = self._weights(model, out)  # φ as a function of α, β
            lower = scheduled_loss(text_w, out["text_loss"], image_w, out.get("image_loss"))  # eq (9) at the current θ
            lower_grad = torch.autograd.grad(lower, params, create_graph=True, allow_unused=True)
            info: dict = {}
            hyper = implicit_hypergradient(upper_grad, lower_grad, params, phi, cfg.neumann_terms, scale,
                                           power_iters=cfg.power_iterations, info=info,
                                           damping=cfg.neumann_damping if cfg.neumann_scaling == "power" else "none")  # eqs (13)-(14)
        raw = [float(g) for g in hyper]  # logged before the engine clips p.grad in place
        logs = {"dev_loss": dev_loss.item(), "hypergrad_alpha": raw[0], "hypergrad_beta": raw[1],
                "hypergrad_norm": math.sqrt(sum(g * g for g in raw)), "neumann_gamma": info["gamma"]}
        if "lambda_max" in info:
            logs["hessian_lambda_max"] = info["lambda_max"]
        if "lambda_min" in info:
            logs["hessian_lambda_min"], logs["neumann_damping"] = info["lambda_min"], info["damping"]
        # the engine clips ∇φ to train.grad_clip: how often it does is how often φ's step ignores the
        # hypergradient's size (issue 27); the trainer reduces *_min / *_max keys by min / max per epoch
        clip = step.grad_clip
        clipped = not math.isfinite(logs["hypergrad_norm"]) or (clip is not None and logs["hypergrad_norm"] > clip)
        logs.update(hypergrad_clipped=float(clipped), hypergrad_norm_min=logs["hypergrad_norm"],
                    hypergrad_norm_max=logs["hypergrad_norm"])
        self._upper_counts["steps"] += 1
        self._upper_counts["clipped"] += int(clipped)
        if not all(math.isfinite(g) for g in raw):  # never let a NaN/inf reach φ (and through φ, θ)
            logs["hypergrad_skipped"] = 1.0
            return logs
        for p, g in zip(phi, hyper):
            p.grad = g.detach().clone().to(p.dtype)
        step.optimizer_step("meta")  # φ ← φ − η2 ∇φ L_dev (Algorithm 1 line 12)
        return logs

    # -- Figure 4 trace -------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        self._batch_in_epoch = 0
        self._upper_counts = {"steps": 0, "clipped": 0}

    def epoch_warnings(self, epoch: int, metrics: dict[str, float]) -> list[str]:
        """More than 10 % of the epoch's upper steps clipped: φ then moves by η2·(clip) in a direction
        the hypergradient's growth, not its value, decides (issue 27)."""
        steps, clipped = self._upper_counts["steps"], self._upper_counts["clipped"]
        if not steps or clipped / steps <= CLIPPED_WARNING:
            return []
        return [f"cmcs: {clipped}/{steps} upper steps of epoch {epoch + 1} had their hypergradient clipped "
                f"(raw ‖∇φ‖ above train.grad_clip; see hypergrad_norm_min/max in log.jsonl): check model.neumann_scaling, "
                f"model.neumann_terms and model.neumann_damping"]

    def _trace(self, model: CMCSModel, step: StepControl, logs: dict) -> None:
        run_dir = self.ctx.run_dir
        if not self.config.trace or run_dir is None or not self.ctx.world.is_main:
            return
        path = Path(run_dir) / TRACE_FILE
        if not self._trace_started:  # a resumed run drops the rows of the epochs it redoes
            kept = [r for r in store.read_jsonl(path) if r["epoch"] < step.epoch]
            store.write_jsonl(path, kept)
            self._trace_started = True
        row = {"epoch": step.epoch, "batch": self._batch_in_epoch, "global_step": step.global_step,
               "alpha": model.scheduler.alpha.item(), "beta": model.scheduler.beta.item(),
               **{k: logs[k] for k in TRACE_KEYS if k in logs}}
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    # -- inference ------------------------------------------------------------------------------
    def _similarity(self, model: CMCSModel, batch: dict) -> torch.Tensor:
        """θ of eq 15 (see `fusion_encoder` in the recipe's assumptions)."""
        if self.config.fusion_encoder == "clip_image":
            text = model.clip_image_embedding(batch["pixel_values"])
            prompt = model.clip_text_embedding(batch["clip_prompt_ids"], batch["clip_prompt_ids_mask"])
        elif self.config.fusion_encoder == "clip":
            text = model.clip_text_embedding(batch["clip_sentence_ids"], batch["clip_sentence_ids_mask"])
            prompt = model.clip_text_embedding(batch["clip_prompt_ids"], batch["clip_prompt_ids_mask"])
        else:
            text = model.text_features(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            prompt = model.text_features(batch["bert_prompt_ids"], batch["bert_prompt_ids_mask"])
        return F.cosine_similarity(text.float(), prompt.float(), dim=-1)

    def predict(self, model, batch) -> list[dict]:
        out = model(batch)
        text_probs = out["text_logits"].float().softmax(-1)
        if model.has_image:
            similarity = self._similarity(model, batch)
            scores = fuse_predictions(text_probs, out["image_logits"].float().sigmoid(), similarity)  # eq (15)
            theta = similarity.clamp(0.0, 1.0)  # the image's weight actually used
        else:
            theta, scores = torch.zeros(len(batch["index"])), text_probs
        return [{"index": i, "label": int(y), "pred": int(p), "text_pred": int(tp), "theta": float(t)}
                for i, y, p, tp, t in zip(batch["index"], batch["labels"].tolist(), scores.argmax(-1).tolist(),
                                          text_probs.argmax(-1).tolist(), theta.tolist())]

    def metrics(self, predictions: list[dict], split: str) -> dict[str, float]:
        labels = [p["label"] for p in predictions]
        result = classification_metrics(labels, [p["pred"] for p in predictions], self.config.num_labels)
        text_only = classification_metrics(labels, [p["text_pred"] for p in predictions], self.config.num_labels)
        result.update(text_accuracy=text_only["accuracy"], text_macro_f1=text_only["macro_f1"],
                      fusion_theta_mean=sum(p["theta"] for p in predictions) / max(1, len(predictions)))
        return result
