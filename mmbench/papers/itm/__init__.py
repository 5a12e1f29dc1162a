"""ITM — Targeted Multimodal Sentiment Classification based on Coarse-to-Fine Grained Image-Target
Matching (Yu, Wang, Xia, Li; IJCAI-22). Released code: NUSTM/ITM (`variant: official`).

Equations → files
  §4.1 inputs, eqs 1–9 (coarse/fine matching, relevance gate, fusion, losses)   model.py
  Transformer / cross-modal Transformer layers                                  layers.py
  eq 10 (alternating optimisation over the two data sources)                    method.py
  Table 4/5 metrics (relevance, KL, R@k, grounding accuracy)                    metrics.py
Data: ITM's own pickles and the ITM-VG annotations are read only by this paper, so their reader
(`data.py`), the memory-mapped region-feature store (`regions.py`) and their synthetic writers
(`synthetic.py`) live here; the TomBERT Twitter text is the shared reader in `mmbench.data.formats`.
Recipes and tables: `recipes/itm/` (`paper.yaml` = Tables 3–6); rendered to `results/tables/itm.md`.
"""
