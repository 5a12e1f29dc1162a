"""DCPA — Decoupled Cross-modal Phrase-Attention Network for Image-Sentence Matching (Shi, Zhang,
Wei, Wu, Zhang; IEEE TIP 2022). No released code: a first implementation from the paper.

Equations → files
  eqs 1–15 (FEM, Intra-PAM, Inter-PAM, similarities, hardest-negative triplet loss)   model.py
  the attention layers of Intra-/Inter-PAM (eqs 1–6, 11–12; two pair kernels)       attention.py
  two-stage training (§III-D)                                                        method.py
  frozen BERT word features (cached) / SCAN's Bi-GRU text backbone                   text.py / gru.py
  blocked all-pairs scoring for evaluation (reference and fast paths)                evaluate.py
Data: the shared SCAN precomp reader (`mmbench.data.formats.scan`) and the shared retrieval metrics
(`mmbench.metrics.retrieval`), both usable by any retrieval paper. Recipes: `recipes/dcpa/`
(`paper.yaml` = Tables I–IV); rendered to `results/tables/dcpa.md`.
"""
