"""SPP-SCL's trainable network over frozen-encoder features (paper §Methodology, eqs 1-3).

Inputs (from the feature cache, or from live frozen encoders): an image feature map [B, C, h, w]
(ResNet-50 layer 4), the [CLS] states of BERT's last L layers [B, L, H] and the word-token states of
those layers [B, L, N, H] with a mask [B, N].

Layer sizes the paper leaves out (128-d branch width, 64-unit BiLSTM per direction, the two-layer
projection "M", the 64-unit classifier) follow the released code (official-code.md §4d).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def projection(in_dim: int, dim: int, dropout: float) -> nn.Sequential:
    """M(·): FC layers with non-linear activation down to the D-dimensional sentiment embedding
    (the released code's EncodingPart Linear-BN-ReLU-Dropout-Linear-BN, then its Align Linear-BN-ReLU-Dropout)."""
    return nn.Sequential(
        nn.Linear(in_dim, dim), nn.BatchNorm1d(dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim), nn.BatchNorm1d(dim),
        nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(), nn.Dropout(dropout),
    )


class ImageBranch(nn.Module):
    """Eq (1): I_p = M(P(c(ResNet(I)))), c = 1×1 conv + BN + ReLU, P = adaptive average pooling."""

    def __init__(self, channels: int, width: int, dim: int, dropout: float):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(channels, width, 1), nn.BatchNorm2d(width), nn.ReLU(), nn.Dropout(dropout))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.project = projection(width, dim, dropout)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.project(self.pool(self.conv(feature_map)).flatten(1))  # eq (1)


class HierarchicalAttentionText(nn.Module):
    """Eq (2): T'_c = S(M(P_g(T_c))), T'_w = T'_c ⊙ T_w, T_p = M(LSTM(P_c(U(T'_w)))).

    P_g averages each layer's [CLS] over its C channels, giving one score per layer; U sums the
    weighted layers; the BiLSTM reads the summed token states and P_c averages its outputs over the
    token positions (the released code's order: pooling after the LSTM)."""

    def __init__(self, layers: int, hidden: int, lstm_hidden: int, dim: int, dropout: float,
                 mlp_layers: int = 1, packed: bool = True, masked_mean: bool = True):
        super().__init__()
        blocks: list[nn.Module] = []
        for i in range(mlp_layers):  # paper: one FC; released code: Linear-ReLU-Linear, no biases
            blocks += [nn.Linear(layers, layers, bias=False)] + ([nn.ReLU()] if i < mlp_layers - 1 else [])
        self.layer_scores = nn.Sequential(*blocks)
        self.lstm = nn.LSTM(hidden, lstm_hidden, batch_first=True, bidirectional=True, bias=False)
        self.project = projection(2 * lstm_hidden, dim, dropout)
        self.packed, self.masked_mean = packed, masked_mean

    def layer_weights(self, cls: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.layer_scores(cls.mean(-1)))  # T'_c = S(M(P_g(T_c)))  [B, L]

    def forward(self, cls: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.project(self.pooled(cls, tokens, mask))  # T_p = M(·)

    def pooled(self, cls: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """LSTM(U(T'_w)) pooled over positions, before the projection M."""
        weights = self.layer_weights(cls)
        summed = torch.einsum("bl,blnh->bnh", weights, tokens)  # U(T'_c ⊙ T_w): weighted sum over layers
        lengths = mask.sum(1).clamp(min=1)
        if self.packed:  # padded positions never enter the LSTM (neither direction)
            packed = nn.utils.rnn.pack_padded_sequence(summed, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.lstm(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=summed.shape[1])
        else:  # released code: the LSTM runs over every padded position
            out, _ = self.lstm(summed)
        if self.masked_mean:
            pooled = (out * mask[..., None]).sum(1) / lengths[:, None]  # P_c over the real word tokens
        else:
            pooled = out.mean(1)  # released code: mean over all (padded) positions
        return pooled


class CrossModalFusion(nn.Module):
    """Eq (3): self-attention across the batch whose queries and keys are modulated (⊙) by the other
    modality's embedding: I_m = Softmax((Q_I ⊙ T_p)(K_I ⊙ T_p)ᵀ/√D) V_I, T_m likewise; M_p = [I_m, T_m, I_p, T_p]."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        names = ("q_image", "k_image", "v_image", "q_text", "k_text", "v_text")
        self.maps = nn.ModuleDict({n: nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout)) for n in names})
        self.scale = math.sqrt(dim)

    def attend(self, own: torch.Tensor, other: torch.Tensor, prefix: str) -> torch.Tensor:
        query = self.maps[f"q_{prefix}"](own) * other
        key = self.maps[f"k_{prefix}"](own) * other
        attention = torch.softmax(query @ key.t() / self.scale, dim=-1)  # [B, B]: batch-level attention
        return attention @ self.maps[f"v_{prefix}"](own)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        image_m = self.attend(image, text, "image")  # eq (3), I_m
        text_m = self.attend(text, image, "text")  # eq (3), T_m
        return torch.cat([image_m, text_m, image, text], dim=-1)  # M_p


class SPPSCLHeads(nn.Module):
    """Branches + fusion + classifier. `modality` text/image gives the unimodal baselines; `fusion`
    concat is Table 7's "w/o CMF" ([I_p, T_p])."""

    def __init__(self, *, modality: str, fusion: str, image_channels: int, text_hidden: int, layers: int, num_outputs: int,
                 branch_width: int, dim: int, lstm_hidden: int, classifier_hidden: int, dropout: float,
                 ha_mlp_layers: int, packed: bool, masked_mean: bool):
        super().__init__()
        self.modality, self.fusion = modality, fusion
        self.image = ImageBranch(image_channels, branch_width, dim, dropout) if modality != "text" else None
        self.text = (HierarchicalAttentionText(layers, text_hidden, lstm_hidden, dim, dropout, ha_mlp_layers, packed, masked_mean)
                     if modality != "image" else None)
        self.cmf = CrossModalFusion(dim, dropout) if modality == "both" and fusion == "cmf" else None
        fused = dim * (1 if modality != "both" else (4 if fusion == "cmf" else 2))
        self.classifier = nn.Sequential(nn.Linear(fused, classifier_hidden), nn.BatchNorm1d(classifier_hidden), nn.ReLU(),
                                        nn.Dropout(dropout), nn.Linear(classifier_hidden, num_outputs))

    def forward(self, features: dict) -> dict:
        out: dict = {}
        parts = []
        if self.image is not None:
            out["image"] = self.image(features["image_map"])
            parts.append(out["image"])
        if self.text is not None:
            out["text"] = self.text(features["cls"], features["tokens"], features["token_mask"])
            parts.append(out["text"])
        fused = self.cmf(out["image"], out["text"]) if self.cmf is not None else torch.cat(parts, dim=-1)
        out["logits"] = self.classifier(fused)
        return out


class SPPSCLNet(nn.Module):
    """Heads, plus the frozen encoders when features are computed live (no cache). `trained_text_layers`
    (BERT's last layers, the "fine-tuning layers 9-12" reading) get gradients and run in train mode."""

    def __init__(self, heads: SPPSCLHeads, extractor: nn.Module | None = None, encoders_train_mode: bool = False,
                 trained_text_layers: nn.Module | None = None):
        super().__init__()
        self.heads, self.extractor = heads, extractor
        self.encoders_train_mode = encoders_train_mode
        self.trained_text_layers = [trained_text_layers] if trained_text_layers is not None else []  # not a submodule twice
        if extractor is not None:
            extractor.requires_grad_(False)
        for layers in self.trained_text_layers:
            layers.requires_grad_(True)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.extractor is not None and not self.encoders_train_mode:
            self.extractor.eval()  # frozen means frozen: no dropout, no BatchNorm statistics updates
            for layers in self.trained_text_layers:
                layers.train(mode)  # fine-tuned layers: dropout as in BERT fine-tuning
        return self

    def forward(self, batch: dict) -> dict:
        if "features" in batch:
            return self.heads(batch["features"])
        # frozen encoders: no graph (BatchNorm buffers still update in train mode, as in the released code),
        # unless some BERT layers are trained
        with torch.set_grad_enabled(torch.is_grad_enabled() and bool(self.trained_text_layers)):
            features = self.extractor(batch)
        return self.heads(features)
