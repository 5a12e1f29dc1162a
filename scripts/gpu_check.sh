#!/usr/bin/env bash
# One command for a GPU slot (issue 26): every GPU figure the suite lacks, into OUT_DIR (≤ 8 JSON + one log).
#   scripts/gpu_check.sh OUT_DIR                          # cuda, paper sizes, ≤ 8 min (make gpu-check OUT=DIR)
#   scripts/gpu_check.sh --device cpu --tiny --out DIR    # the same parts at tiny sizes (in make test)
# Offline install first: the wheels of scripts/gpu_wheels.txt found in .whl/ (or $MMBENCH_WHEELS) (scripts/gpu_wheels.sh) go into
# $MMBENCH_GPU_SITE (default /tmp/mmbench-gpu-site) with pip --no-index --no-deps --target, put first on
# PYTHONPATH. Without .whl/ (or with MMBENCH_WHEELS=none) the running Python must already have them (as here). Other options: see
# `python benchmarks/gpu_check.py --help`; MMBENCH_OFFICIAL names the released code (default ../shared/official).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WHEELS=${MMBENCH_WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  SITE=${MMBENCH_GPU_SITE:-/tmp/mmbench-gpu-site}
  # name==version pins only: pip picks the file that fits this interpreter from .whl/, and fails if one is missing
  grep -v '^#' scripts/gpu_wheels.txt | grep . | xargs "$PY" -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$SITE" --find-links "$WHEELS" || {
    echo "[gpu-check] the wheels in $WHEELS do not install on $("$PY" -V) (make gpu-wheels fetches the GPU image's cp312;" \
         "PYVER=X.Y for another); MMBENCH_WHEELS=none uses this Python's own packages" >&2; exit 2; }
  export PYTHONPATH="$SITE:$PYTHONPATH"
  echo "[gpu-check] installed $(grep -cv '^#' scripts/gpu_wheels.txt) wheels into $SITE"
  # every carried wheel imports (a broken install shows here, in one line, not inside each part)
  "$PY" -c "import datasets, ot, torchcrf, pydantic, submitit, mmbench.cli" \
    || echo "[gpu-check] WARNING: a carried package does not import; parts that need it will fail" >&2
fi
exec "$PY" benchmarks/gpu_check.py "$@"
