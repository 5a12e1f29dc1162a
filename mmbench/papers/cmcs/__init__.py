"""CMCS — Cross-Modal Causal Scheduling for targeted multimodal sentiment classification (Zhao, Li,
Wang, Liao; ECML-PKDD 2025). No released code: this is a first implementation from the paper.

Equations → files
  eqs 1–9, 15 (feature selection, causal effects, scheduler, scheduled loss, fusion)   model.py
  eqs 10–14 (bi-level optimisation, implicit hypergradient by truncated Neumann series)  hypergrad.py
  Algorithm 1 (lower / upper steps), the per-batch trace of Figure 4                     method.py
  ground truth for eqs 13-14: finite difference of L_dev over the H lower steps           oracle.py (cases: oracle_cases.py)
  CLIP loading for the image tower and the eq-15 prompt similarity                       clip.py
  Figure 4 rendered from a run's trace                                                  figure4.py
Data: the shared TomBERT Twitter reader. Recipes: `recipes/cmcs/` (`paper.yaml` = Tables 1–2);
rendered to `results/tables/cmcs.md`.
"""
