"""CMCS model blocks (paper §3.2-3.5), one per equation group:

- `FeatureSelector`      Multi-modal Feature Selection (MFS): mask and counterfactual features, eqs 1-2 / 4-5
- `causal_effect`        counterfactual causal effect of the selected features, eqs 7-8
- `CausalScheduler`      learnable scheduling weights φ = softplus(α·Δε), softplus(β·Δε) (§3.3)
- `scheduled_loss`       the scheduled objective of one batch, eq 9 (and eq 10 on the dev subset)
- `fuse_predictions`     inference fusion, eq 15
- `CMCSModel`            BERT text encoder + CLIP image encoder + the blocks above

The encoders come in from outside (HF models by name, or tiny random ones for tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(dim: int, dropout: float) -> nn.Sequential:
    """The paper's unspecified "MLP": two linear layers of width d with GELU (assumption)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))


class FeatureSelector(nn.Module):
    """Causal intervention network of one modality (the do-operator as a learned soft mask).

    M = Sigmoid(MLP(E))                       eq (1) text / eq (4) image
    Ē = MLP(M ⊙ E + MLP(M ⊙ E))               eq (2) text / eq (5) image
    `fixed_mask` (w/o MFS ablation, Table 2) replaces M by a constant (0.5 in the paper)."""

    def __init__(self, dim: int, dropout: float, fixed_mask: float | None = None):
        super().__init__()
        self.mask_mlp = mlp(dim, dropout)
        self.inner_mlp = mlp(dim, dropout)
        self.outer_mlp = mlp(dim, dropout)
        self.fixed_mask = fixed_mask

    def mask(self, features: torch.Tensor) -> torch.Tensor:
        if self.fixed_mask is not None:
            return torch.full_like(features, self.fixed_mask)
        return torch.sigmoid(self.mask_mlp(features))  # eq (1)/(4)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.mask(features)
        selected = mask * features
        counterfactual = self.outer_mlp(selected + self.inner_mlp(selected))  # eq (2)/(5)
        return counterfactual, mask


def text_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels)  # eq (3): L_t = L_ce(ȳ^t, y^t)


def image_loss(logits: torch.Tensor, multi_hot: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), multi_hot.float())  # eq (6): L_v = L_bce(ȳ^v, y^v)


def causal_effect(loss_original: torch.Tensor, loss_counterfactual: torch.Tensor, clamp: float | None = None) -> torch.Tensor:
    """Δε = exp(L(y, ŷ) - L(y, ȳ)), eq (7) for text (CE) and eq (8) for images (BCE); > 1 when the
    selected (counterfactual) features give a smaller loss than the original ones. A weight, so it
    carries no gradient (eq 12 treats φ as fixed). `clamp` bounds the exponent (assumption, fp32 safety)."""
    diff = (loss_original - loss_counterfactual).detach().float()
    if clamp is not None:
        diff = diff.clamp(-clamp, clamp)
    return torch.exp(diff)


class CausalScheduler(nn.Module):
    """φ_t,b = softplus(α·Δε(Ē^t)), φ_v,b = softplus(β·Δε(Ē^v)) with learnable α, β (§3.3).

    `step_multipliers` turns φ into per-modality learning-rate multipliers (`phi_application: step`,
    see method.py): φ divided by a bias-corrected running mean of φ over past batches (both modalities
    pooled), so the ratio φ_t/φ_v and each batch's φ relative to the usual level survive while the mean
    learning rate stays η1. The running mean is a buffer, so checkpoints and resumes keep it."""

    def __init__(self, init_alpha: float = 1.0, init_beta: float = 1.0):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(init_alpha)))
        self.beta = nn.Parameter(torch.tensor(float(init_beta)))
        self.register_buffer("phi_mean", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("phi_mean_weight", torch.tensor(0.0, dtype=torch.float64))

    def forward(self, text_effect: torch.Tensor, image_effect: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.softplus(self.alpha * text_effect), F.softplus(self.beta * image_effect)

    @torch.no_grad()
    def step_multipliers(self, weights: list[float], decay: float) -> list[float]:
        self.phi_mean.mul_(decay).add_((1 - decay) * sum(weights) / len(weights))
        self.phi_mean_weight.mul_(decay).add_(1 - decay)
        level = float(self.phi_mean / self.phi_mean_weight)
        return [w / level for w in weights]


def scheduled_loss(text_weight, text_loss_value, image_weight=None, image_loss_value=None) -> torch.Tensor:
    """One batch's term of eq (9) (and of eq (10) on D_dev): φ_t,b·L_t + φ_v,b·L_v."""
    loss = text_weight * text_loss_value
    if image_loss_value is not None:
        loss = loss + image_weight * image_loss_value
    return loss


def fuse_predictions(text_probs: torch.Tensor, image_probs: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """y^h = (1 - θ)·ȳ^t + θ·ȳ^v, eq (15); θ = cos(E^t, E^p) per example, clamped to [0, 1] (assumption:
    a negative cosine would otherwise give the text a weight above 1)."""
    theta = similarity.clamp(0.0, 1.0).unsqueeze(-1)
    return (1 - theta) * text_probs + theta * image_probs


class CMCSModel(nn.Module):
    """E^t = BERT [CLS]; E^v = CLIP vision pooled output; MFS per modality; classifiers f_t, f_v.

    `clip` is a transformers CLIPModel (its vision tower gives E^v, its text tower the eq 15 prompt
    embedding) or None for the w/o-visual ablation."""

    def __init__(self, text_encoder: nn.Module, clip: nn.Module | None, num_labels: int, dropout: float,
                 fixed_mask: float | None, train_image_encoder: bool, init_alpha: float, init_beta: float):
        super().__init__()
        self.text_encoder = text_encoder
        d_t = text_encoder.config.hidden_size
        self.text_selector = FeatureSelector(d_t, dropout, fixed_mask)
        self.text_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_t, num_labels))  # f_t
        self.clip = clip
        if clip is not None:
            d_v = clip.config.vision_config.hidden_size
            self.image_selector = FeatureSelector(d_v, dropout, fixed_mask)
            self.image_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_v, num_labels))  # f_v
            for name, p in clip.named_parameters():
                # the CLIP text tower only embeds the eq-15 prompt: frozen; the vision tower by recipe
                p.requires_grad = train_image_encoder and name.startswith("vision_model.")
        self.scheduler = CausalScheduler(init_alpha, init_beta)

    @property
    def has_image(self) -> bool:
        return self.clip is not None

    def text_features(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        return self.text_encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state[:, 0]

    def image_features(self, pixel_values) -> torch.Tensor:
        grad = any(p.requires_grad for p in self.clip.vision_model.parameters())
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return self.clip.vision_model(pixel_values=pixel_values).pooler_output

    def clip_image_embedding(self, pixel_values) -> torch.Tensor:
        """CLIP's image embedding in the joint space (vision pooled output → visual projection)."""
        return self.clip.visual_projection(self.image_features(pixel_values))

    def clip_text_embedding(self, input_ids, attention_mask) -> torch.Tensor:
        pooled = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.clip.text_projection(pooled)

    def forward(self, batch: dict, effect_clamp: float | None = None) -> dict[str, torch.Tensor]:
        """Losses, causal effects and logits of one batch (training and the upper-level step)."""
        e_t = self.text_features(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        cf_t, mask_t = self.text_selector(e_t)
        logits_t = self.text_head(cf_t)  # ȳ^t = f_t(Ē^t)
        out = {"text_logits": logits_t, "text_mask": mask_t, "text_loss": text_loss(logits_t, batch["labels"])}
        with torch.no_grad():
            original_t = text_loss(self.text_head(e_t), batch["labels"])  # ŷ^t = f_t(E^t)
        out["text_effect"] = causal_effect(original_t, out["text_loss"], effect_clamp)  # eq (7)
        out["text_log_effect"] = (original_t - out["text_loss"]).detach()  # ln Δε before the clamp (trace)
        if self.has_image:
            e_v = self.image_features(batch["pixel_values"])
            cf_v, mask_v = self.image_selector(e_v)
            logits_v = self.image_head(cf_v)  # ȳ^v = f_v(Ē^v)
            out.update(image_logits=logits_v, image_mask=mask_v, image_loss=image_loss(logits_v, batch["image_targets"]))
            with torch.no_grad():
                original_v = image_loss(self.image_head(e_v), batch["image_targets"])  # ŷ^v = f_v(E^v)
            out["image_effect"] = causal_effect(original_v, out["image_loss"], effect_clamp)  # eq (8)
            out["image_log_effect"] = (original_v - out["image_loss"]).detach()
        return out
