"""DCPA: Decoupled Cross-modal Phrase-Attention for image–sentence retrieval (Shi et al., IEEE TIP
2022). First public implementation, from the paper; data and evaluation follow SCAN.

Two-stage training inside one run (§III-D): epochs [0, stage1_epochs) train Intra-PAM (+ the FEM's
region FC) with eq (15) on S(i^V, c^T), batch `train.batch_size` (300); then the best stage-1 weights
(the run's `best.pt`) are reloaded, Intra-PAM is frozen and Inter-PAM trains with eq (15) on the pair
(S(i^T,c), S(i,c^V)), batch `stage2_batch_size` (84). `train.epochs == stage1_epochs` is the Intra-PAM
model of Table I. `stage1_checkpoint` + `stage1_epochs: 0` starts stage 2 from a finished stage-1 run.
The learning rate follows cosine annealing with warm restarts per stage (restarting at stage 2), set
by this method each step; the recipe's engine schedule must be `constant`.

Model selection: `select_rsum` = dev RSUM + 1000·(stage − 1), i.e. the best dev RSUM of the last stage
reached (a Full-Model run never reports a stage-1 checkpoint).

Text backbone (`model.text_backbone`): `bert` = frozen BERT word features from a cache (text.py);
`bigru` = SCAN's word embedding + Bi-GRU (gru.py), trained with Intra-PAM in stage 1 (frozen with it
in stage 2), its vocabulary built from the training captions in setup and kept in the model.

Examples are captions (SCAN): caption j and its image j // 5 form a positive pair. Evaluation scores
every image × caption pair of a split in blocks (`evaluate.blocked_all_pairs`); `eval_fast` (default)
sorts captions by length and keeps the score matrices on the device, `pair_attention` chooses the
attention kernel (attention.py), `eval_compile` wraps the per-block scoring in torch.compile (one graph
per stage: the stage is a Python constant there). `eval_precision: fp32` (default) evaluates in float32
on every device, whatever the run's training autocast, so ranks are fp32's; `bf16` is the opt-in fast
mode: bf16 transformer layers, float32 similarities, top-K and weighting (evaluate.eval_precision).
"""

from __future__ import annotations

from typing import Iterator, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from mmbench.data.formats.scan import CAPTIONS_PER_IMAGE, open_features
from mmbench.engine.batching import epoch_batches
from mmbench.engine.checkpoint import load_checkpoint
from mmbench.engine.method import Method, StepControl
from mmbench.engine.optim import schedule_factor
from mmbench.errors import MmbenchError, RecipeError
from mmbench.papers.dcpa.attention import set_pair_kernel
from mmbench.papers.dcpa.evaluate import score_all_pairs
from mmbench.papers.dcpa.gru import BiGRUWordEncoder, TokenIds, build_vocab, check_checkpoint_vocab
from mmbench.papers.dcpa.model import DCPADims, DCPAModel, hardest_negative_triplet
from mmbench.papers.dcpa.text import word_features
from mmbench.metrics.retrieval import average_folds, caption_ranks, chance_rsum, recall_metrics
from mmbench.recipes.schema import ScheduleCfg

Similarity = Literal["local_agg", "global_ave"]
STAGE_OFFSET = 1000.0  # > any RSUM (max 600): makes (stage, RSUM) one number for model selection
# eval blocks when the recipe leaves them to the device: (images, captions). On the CPU a block's pair
# activations should stay in cache (≈10 MB at 8 × 32 pairs); on a GPU a block should fill the device.
EVAL_BLOCKS = {"cpu": (8, 32), "cuda": (128, 512)}


class DCPAConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text_backbone: Literal["bert", "bigru"] = "bert"  # Table I: BERT rows vs `[GRU]` rows
    text_encoder: str = "bert-base-uncased"  # bert backbone only
    max_length: int = 128
    word_cache_dtype: Literal["float16", "float32"] = "float16"
    special_tokens: Literal["drop", "keep"] = "drop"  # BERT's [CLS]/[SEP] as words of the caption (text.py)
    # bigru backbone only (SCAN's EncoderText / vocab.py)
    vocab_threshold: int = 4
    vocab_splits: tuple[str, ...] = ("train",)
    word_embed_dim: int = 300
    gru_hidden: int = 1024
    gru_layers: int = 1
    train_text_backbone_in_stage2: bool = False
    embed_dim: int = 256
    heads: int = 16
    ffn_dim: int = 1024
    dropout: float = 0.1
    cnn_filters: int = 512
    cnn_windows: tuple[int, ...] = (1, 2, 3)
    top_k: int = 10
    margin: float = 0.1
    max_violation: bool = True
    # epochs at the start of each stage that sum over all negatives before switching to the hardest
    # (VSE++'s known cold-start collapse; 0 = the paper's hardest negatives throughout)
    max_violation_warmup_epochs: int = 0
    loss_reduction: Literal["sum", "mean"] = "sum"
    # "not learning" warning (epoch_warnings): checked after each stage's N-th epoch (N ≥ 2; 0: never);
    # the fraction of the RSUM headroom each stage must have gained over its start by then (stage 1, 2)
    not_learning_epochs: int = 2
    not_learning_min_gain: tuple[float, float] = (0.05, 0.0)
    intra_similarity: Similarity = "local_agg"  # Table III: local-agg (eq 10) vs global-ave (SAEM)
    inter_similarity: Similarity = "local_agg"  # Table IV "w/o local-agg"
    decoupled: bool = True  # Table IV "w/o decoupled"
    infer_weights: tuple[float, float] = (0.6, 0.4)  # W1, W2
    stage1_epochs: int = 50
    stage2_batch_size: int = 84
    stage1_checkpoint: str | None = None
    train_region_fc_in_stage2: bool = False
    # T_0 of cosine annealing with warm restarts; `stage`: T_0 = the stage's length (one cosine per stage,
    # the only restart at stage 2)
    lr_restart_epochs: int | Literal["stage"] = 10
    lr_restart_mult: int = 1
    lr_eta_min: float = 0.0
    test_split: str = "test"  # COCO: testall (5K), with fold_images=1000 for the 1K protocol
    fold_images: int | None = None
    dev_images: int | None = None  # SCAN validates on the first 1000 dev images (Flickr30K and COCO)
    pair_attention: Literal["batched", "broadcast"] = "batched"  # attention.py; same numbers
    eval_fast: bool = True  # length-sorted caption blocks, score matrices kept on the device
    eval_compile: bool = False  # torch.compile the per-block scoring (CUDA: worth it on big splits)
    eval_precision: Literal["fp32", "bf16"] = "fp32"  # evaluate.eval_precision: fp32 ranks on every device
    eval_image_block: int | None = None  # None: by device (EVAL_BLOCKS)
    eval_caption_block: int | None = None
    progress: bool = False


class DCPA(Method):
    Config = DCPAConfig
    supports_ddp = False  # evaluation scores a whole split in one process

    # -- data -----------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.config
        schedule = self.recipe.train.optimizers["main"].schedule
        if schedule.name != "constant":
            raise RecipeError("train.optimizers.main.schedule.name: dcpa sets its per-stage cosine-restart lr "
                              "itself (model.lr_restart_epochs); use `constant` here")
        if cfg.not_learning_epochs == 1 or not all(0.0 <= gain < 1.0 for gain in cfg.not_learning_min_gain):
            raise RecipeError(f"model.not_learning_epochs {cfg.not_learning_epochs} / not_learning_min_gain "
                             f"{cfg.not_learning_min_gain}: N = 0 (off) or ≥ 2 epochs; fractions of the RSUM headroom in [0, 1)")
        self.split_of = {"train": "train", "dev": "dev", "test": cfg.test_split}
        self.features, self.words = {}, {}
        self.vocab = self._build_vocab() if cfg.text_backbone == "bigru" else None
        for split, source in self.split_of.items():
            if source not in self.data:
                raise MmbenchError(f"prepared {self.recipe.dataset} has no split {source!r} (model.test_split)")
            rows = self.data[source]
            n = len(rows) - len(rows) % CAPTIONS_PER_IMAGE  # data.subset may cut an image's captions
            if split == "dev" and cfg.dev_images is not None:
                n = min(n, cfg.dev_images * CAPTIONS_PER_IMAGE)
            self.features[split] = open_features(self.manifest, source)
            if self.vocab is not None:  # trainable backbone: token ids, nothing cached
                self.words[split] = TokenIds(list(rows["caption"]), self.vocab)
            else:
                key = {"dataset": self.recipe.dataset, "split": source,
                       "captions": self.manifest["raw_files"].get(f"{source}_caps.txt"), "synthetic": self.recipe.data.synthetic}
                self.words[split] = word_features(list(rows["caption"]), key, cfg.text_encoder, cfg.max_length,
                                                  cfg.word_cache_dtype, self.ctx.device, cfg.special_tokens)
            self.examples[split] = list(range(n))
        self.stage1_epochs = 0 if cfg.stage1_checkpoint else cfg.stage1_epochs
        self.stage = 1 if self.stage1_epochs > 0 else 2

    def _build_vocab(self) -> list[str]:
        """Deterministic: the same training captions always give the same vocabulary and ids."""
        captions = []
        for split in self.config.vocab_splits:
            if split not in self.data:
                raise MmbenchError(f"prepared {self.recipe.dataset} has no split {split!r} (model.vocab_splits)")
            captions += list(self.data[split]["caption"])
        return build_vocab(captions, self.config.vocab_threshold)

    def _regions(self, split: str, images: list[int]) -> torch.Tensor:
        unique, inverse = np.unique(np.asarray(images), return_inverse=True)
        block = np.asarray(self.features[split][unique], dtype=np.float32)  # reads only these rows
        return torch.from_numpy(block[inverse]).to(self.ctx.device)

    def collate(self, captions: list[int], split: str = "train") -> dict:
        words, mask = self.words[split].batch(captions, self.ctx.device)
        return {"regions": self._regions(split, [c // CAPTIONS_PER_IMAGE for c in captions]),
                "words": words, "mask": mask, "index": captions}

    def train_batches(self, epoch: int) -> Iterator[dict]:
        size = self.recipe.train.batch_size if self.stage == 1 else self.config.stage2_batch_size
        for batch in epoch_batches(len(self.examples["train"]), size, self.ctx.seed, epoch, self.recipe.train.shuffle,
                                   self.recipe.train.drop_last):
            yield self.collate([self.examples["train"][i] for i in batch])

    def eval_batches(self, split: str) -> Iterator[str]:
        yield split  # one "batch": predict scores the whole split in blocks

    # -- model ----------------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        cfg = self.config
        word_encoder = None
        if cfg.text_backbone == "bigru":
            word_encoder = BiGRUWordEncoder(self.vocab, cfg.word_embed_dim, cfg.gru_hidden, cfg.gru_layers)
            word_dim = cfg.gru_hidden  # the GRU's directions are averaged: hidden, not 2 × hidden
        else:
            word_dim = self.words["train"].dim  # BERT's hidden size (768 for bert-base)
        dims = DCPADims(region_dim=int(self.manifest["extra"]["region_dim"]), word_dim=word_dim,
                        dim=cfg.embed_dim, heads=cfg.heads, ffn_dim=cfg.ffn_dim, dropout=cfg.dropout,
                        filters=cfg.cnn_filters, windows=tuple(cfg.cnn_windows))
        self.model = DCPAModel(dims, cfg.top_k, cfg.intra_similarity, cfg.inter_similarity, cfg.decoupled,
                               tuple(cfg.infer_weights), word_encoder)
        if cfg.stage1_checkpoint:
            if word_encoder is not None:
                check_checkpoint_vocab(cfg.stage1_checkpoint, self.vocab)
            load_checkpoint(cfg.stage1_checkpoint, self.model)
        # every parameter stays trainable here: the engine builds the optimiser from the trainable ones
        # after build_model; on_epoch_start freezes per stage (frozen ones get no grad, Adam skips them)
        self.model.stage.fill_(self.stage)
        set_pair_kernel(self.model, cfg.pair_attention)
        self._compiled: dict[int, object] = {}  # per stage
        self._stage_rsum: dict[int, list[float]] = {}  # dev RSUM per epoch of each stage (epoch_warnings)
        return self.model

    def _set_stage(self, stage: int) -> None:
        self.stage = stage
        self.model.stage.fill_(stage)
        for p in self.model.intra.parameters():
            p.requires_grad_(stage == 1)
        for p in self.model.inter.parameters():
            p.requires_grad_(stage == 2)
        if stage == 2 and self.config.train_region_fc_in_stage2:
            self.model.intra.region_fc.requires_grad_(True)
        if stage == 2 and self.config.train_text_backbone_in_stage2 and self.model.intra.word_encoder is not None:
            self.model.intra.word_encoder.requires_grad_(True)

    def on_epoch_start(self, epoch: int) -> None:
        stage = 1 if epoch < self.stage1_epochs else 2
        if stage == 2 and epoch == self.stage1_epochs > 0:
            best = self.ctx.run_dir / "checkpoints" / "best.pt" if self.ctx.run_dir else None
            if best is not None and best.exists():  # Inter-PAM starts from the best Intra-PAM
                load_checkpoint(best, self.model, map_location=self.ctx.device)
        self._set_stage(stage)

    def _epoch_in_stage(self, epoch: int) -> int:
        return epoch - (0 if self.stage == 1 else self.stage1_epochs)

    def _stage_lr(self, epoch: int) -> float:
        epoch_in_stage = self._epoch_in_stage(epoch)
        cfg = self.config
        t0 = cfg.lr_restart_epochs
        if t0 == "stage":
            t0 = self.stage1_epochs if self.stage == 1 else self.recipe.train.epochs - self.stage1_epochs
        schedule = ScheduleCfg(name="cosine_restarts", t0=max(1, t0), t_mult=cfg.lr_restart_mult,
                               eta_min=cfg.lr_eta_min)
        return self.recipe.train.optimizers["main"].lr * schedule_factor(schedule, epoch_in_stage, 0, 1)

    def train_step(self, model, batch, step: StepControl) -> dict[str, float]:
        lr = self._stage_lr(step.epoch)
        for group in step.optimizers["main"].param_groups:
            group["lr"] = lr
        if self.stage == 2:
            model.intra.eval()  # frozen: no dropout
        with step.autocast():
            img = model.encode_images(batch["regions"])
            cap = model.encode_captions(batch["words"], batch["mask"])
            if self.stage == 1:
                s_i2t = s_t2i = model.intra_scores(img, cap).float()  # eq (15) with S(i^V, c^T)
            else:
                s_i2t, s_t2i = (s.float() for s in model.inter_scores(img, cap))  # eq (15) with (S(i^T,c), S(i,c^V))
        cfg = self.config
        hardest = cfg.max_violation and self._epoch_in_stage(step.epoch) >= cfg.max_violation_warmup_epochs
        loss = hardest_negative_triplet(s_i2t, s_t2i, cfg.margin, hardest, cfg.loss_reduction)
        step.backward(loss)
        step.optimizer_step("main", advance_schedule=False)  # the lr set above is the schedule; a `constant` one would reset it
        return {"loss": loss.item(), "lr": lr, "stage": float(self.stage)}

    def epoch_warnings(self, epoch: int, metrics: dict[str, float]) -> list[str]:
        """"Not learning" check, once per stage, after the stage's `not_learning_epochs`-th epoch (N ≥ 2).
        The stage is not learning when its dev RSUM (a) has not improved on its own first epoch, or (b)
        has not risen above where the stage started by `not_learning_min_gain[stage - 1]` of the headroom
        (600 − start). Stage 1 starts from random scores (chance_rsum's expected RSUM): (b) catches a
        collapse to near chance, (a) a model that does not move even where chance is noisy (few dev
        images). Stage 2 starts from the best stage-1 dev RSUM (Intra-PAM alone, which stage 2 reloads):
        an Inter-PAM that adds nothing is not learning. Stage 1 not run in this run dir
        (`stage1_checkpoint`): stage 2 is judged by (a) only. A resumed run reads the RSUMs of the epochs
        it already trained from the log (`on_resume`)."""
        if "rsum" not in metrics:
            return []
        history = self._stage_rsum.setdefault(self.stage, [])
        history.append(metrics["rsum"])
        cfg = self.config
        if cfg.not_learning_epochs < 2 or len(history) != cfg.not_learning_epochs:
            return []
        split = self.recipe.train.select_split
        best, gain = max(history[1:]), cfg.not_learning_min_gain[self.stage - 1]
        reasons = []
        if best <= history[0]:
            reasons.append(f"not above its first epoch's {history[0]:.1f}")
        if self.stage == 1:
            n_images = len(self.examples[split]) // CAPTIONS_PER_IMAGE
            start, what = chance_rsum(n_images, CAPTIONS_PER_IMAGE)[0], f"random scores' {n_images}-image RSUM"
        else:
            start, what = max(self._stage_rsum.get(1, [float("inf")])), "the stage-1 model it started from"
        needed = start + gain * (600.0 - start)
        if start < float("inf") and max(history) <= needed:
            reasons.append(f"not above {needed:.1f} ({what}, {start:.1f}, + {gain:g} of the headroom to 600)")
        if not reasons:
            return []
        hint = (" Hardest negatives from the first step can collapse training: model.max_violation_warmup_epochs=1 "
                "or 2 starts each stage on all negatives." if cfg.max_violation else "")
        return [f"stage {self.stage} not learning: {split} RSUM {max(history):.1f} after {len(history)} epochs, "
                f"{' and '.join(reasons)}.{hint}"]

    def on_resume(self, history: list[dict]) -> None:
        split = self.recipe.train.select_split
        for row in history:  # the per-stage dev RSUMs of the "not learning" check, as epoch_warnings kept them
            if "rsum" in (row.get(split) or {}):
                self._stage_rsum.setdefault(int(row["train"].get("stage", 1)), []).append(row[split]["rsum"])

    # -- evaluation -----------------------------------------------------------------------------
    def eval_blocks(self) -> tuple[int, int]:
        cfg = self.config
        image_block, caption_block = EVAL_BLOCKS.get(self.ctx.device.type, EVAL_BLOCKS["cuda"])
        return cfg.eval_image_block or image_block, cfg.eval_caption_block or caption_block

    def _pair_scores(self, model):
        stage = int(model.stage)  # read here, outside the compiled region
        if not self.config.eval_compile:
            return model.stage_pair_scores(stage)
        if stage not in self._compiled:  # shapes change with each block's caption length: compile dynamic
            self._compiled[stage] = torch.compile(model.stage_pair_scores(stage), dynamic=True)
        return self._compiled[stage]

    def score_split(self, model, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(S_i2t, S_t2i) [N_images, N_captions] of every pair of a split, in blocks."""
        cfg = self.config
        n_captions = len(self.examples[split])
        image_block, caption_block = self.eval_blocks()
        return score_all_pairs(model, lambda images: self._regions(split, images), self.words[split],
                               n_captions // CAPTIONS_PER_IMAGE, n_captions, image_block, caption_block,
                               fast=cfg.eval_fast, device=self.ctx.device, pair_scores=self._pair_scores(model),
                               progress=cfg.progress, desc=f"dcpa {split}", precision=cfg.eval_precision)

    def predict(self, model, split: str) -> list[dict]:
        s_i2t, s_t2i = self.score_split(model, split)
        i2t, t2i = caption_ranks(s_i2t, s_t2i, CAPTIONS_PER_IMAGE)
        stage = int(model.stage)
        preds = [{"index": j, "image": j // CAPTIONS_PER_IMAGE, "i2t_rank": int(a), "t2i_rank": int(b), "stage": stage}
                 for j, (a, b) in enumerate(zip(i2t, t2i))]
        fold = self._fold_images(split, s_i2t.shape[0])
        if fold:
            per_fold = fold * CAPTIONS_PER_IMAGE
            for f in range(s_i2t.shape[0] // fold):
                rows, cols = slice(f * fold, (f + 1) * fold), slice(f * per_fold, (f + 1) * per_fold)
                fi2t, ft2i = caption_ranks(s_i2t[rows, cols], s_t2i[rows, cols], CAPTIONS_PER_IMAGE)
                for j, (a, b) in enumerate(zip(fi2t, ft2i)):
                    preds[f * per_fold + j].update(fold=f, i2t_rank_fold=int(a), t2i_rank_fold=int(b))
        return preds

    def _fold_images(self, split: str, n_images: int) -> int | None:
        fold = self.config.fold_images
        if split != "test" or not fold:
            return None
        if n_images % fold:
            raise MmbenchError(f"{self.split_of['test']}: {n_images} images do not split into folds of {fold} (model.fold_images)")
        return fold

    def metrics(self, predictions: list[dict], split: str) -> dict[str, float]:
        out = recall_metrics([p["i2t_rank"] for p in predictions], [p["t2i_rank"] for p in predictions], CAPTIONS_PER_IMAGE)
        if "fold" in predictions[0]:
            folds = []
            for f in sorted({p["fold"] for p in predictions}):
                mine = [p for p in predictions if p["fold"] == f]
                folds.append(recall_metrics([p["i2t_rank_fold"] for p in mine], [p["t2i_rank_fold"] for p in mine]))
            out.update(average_folds(folds, prefix="fold1k_"))
        out["r1_sum"] = out["i2t_r1"] + out["t2i_r1"]  # Figure 4's second axis
        out["select_rsum"] = out["rsum"] + STAGE_OFFSET * (predictions[0]["stage"] - 1)
        return out
