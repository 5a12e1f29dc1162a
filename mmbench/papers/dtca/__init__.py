"""DTCA — Dual-Encoder Transformers with Cross-modal Alignment for Multimodal Aspect-based Sentiment
Analysis (AACL-IJCNLP 2022). Released code: windforfurture/DTCA (`variant: official`).

Equations → files
  eqs 6–12 (text/image encoders, cross-attention, CRF tagging), eq 22 (joint loss)   model.py
  eqs 13–21 (token–patch alignment: cost, Wasserstein distance by exact EMD / IPOT)  alignment.py
  how hard each loss term pulls on the encoders (‖∇L_WD‖ / ‖∇L_CM‖)                  gradient_scale.py
  encoders by name (RoBERTa, ViT / DeiT / Swin for Figure 5)                         encoders.py
  micro P/R/F1 of (span, polarity)                                                   metrics.py
Data: `mabsa.py` groups the shared TomBERT Twitter rows into one tagged sentence per tweet (the
MABSA view only this paper uses, hence here). Recipes: `recipes/dtca/` (`paper.yaml` = Tables 2–3,
Figures 4–5); rendered to `results/tables/dtca.md`.
"""
