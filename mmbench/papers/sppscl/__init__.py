"""SPP-SCL — Semi-Push-Pull Supervised Contrastive Learning for Image-Text Sentiment Analysis and
Beyond (Wu, Li; AAAI-26). Released code: TomorrowJW/SPP-SCL (`variant: official`).

Equations → files
  eqs 1–3 (image branch, hierarchical-attention text branch, cross-modal fusion)   model.py
  eqs 4–7 and Algorithm 1's condition (intra/inter-modal SupCon, total loss)        losses.py
  Algorithm 1 (the two-step update)                                               method.py
  frozen ResNet / BERT features and their cache                                   features.py
Data: the shared CLMLF reader (`mmbench.data.formats.clmlf`: MVSA-Single/-Multiple, HFM), which other
image–text sentiment work reads too. Recipes: `recipes/sppscl/` (`paper.yaml` = Tables 3–7,
Figures 4–5); rendered to `results/tables/sppscl.md`.
"""
