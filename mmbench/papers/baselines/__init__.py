"""Text-only TMSC baselines (BERT / RoBERTa on the sentence–target pair): the "Text Only" rows of
ITM Table 3 and CMCS Table 1.

Files: `method.py` (encoder + first-token classifier).
Recipes: `recipes/baselines/`; the rows that use them are in `recipes/itm/paper.yaml` and
`recipes/cmcs/paper.yaml`. Data: the shared TomBERT Twitter reader (`mmbench.data.formats.tombert`).
"""
