#!/usr/bin/env bash
# Proof of the GPU slot's offline install (issue 26), on a machine with registry access; minutes, not in
# `make test`. A fresh venv gets only the GPU image's package set (torch $TORCH_SPEC, torchvision, transformers 5,
# typer, rich, pandas, pyarrow, pyyaml, scikit-learn, numpy, scipy, pytest, huggingface-hub, fsspec, xxhash, tqdm,
# safetensors, tokenizers; pillow comes with torchvision), then the wheels of scripts/gpu_wheels.txt the way
# scripts/gpu_check.sh installs them (pip --no-index --no-deps --target, nothing else), imports every mmbench
# module and runs the tiny gpu-check. The wheels are fetched for THIS interpreter (PYVER), which may differ from
# the GPU image's 3.12: the pins are the same, the binary files (pot, pydantic-core) are their cpXY builds.
# TORCH_WHEEL=FILE installs torch from a local file with --no-deps (a CUDA build imports on a CPU machine
# without its nvidia-* libraries only if they are not needed at import); TORCH_SPEC otherwise (default: the
# torch the project venv runs, when no 2.11 is obtainable).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-build/gpu-venv}
PY=${BASE_PYTHON:-python3}
PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
WHEELS=${WHEELS:-build/gpu-venv-wheels}
OUT=${OUT:-build/gpu-venv-check}
started=$(date +%s)
rm -rf "$OUT"
if [ -n "${REUSE_VENV:-}" ] && [ -x "$VENV/bin/python" ]; then
  echo "[gpu-venv-check] REUSE_VENV: keeping the image set already in $VENV"
else
rm -rf "$VENV"
"$PY" -m venv "$VENV"
if [ -n "${TORCH_WHEEL:-}" ]; then
  "$VENV/bin/pip" install -q --no-deps "$TORCH_WHEEL"
  "$VENV/bin/pip" install -q filelock "typing-extensions>=4.10" "setuptools<82" "sympy>=1.13.3" "networkx>=2.5.1" jinja2 fsspec
  TORCHVISION=${TORCHVISION_SPEC:-}
  [ -n "$TORCHVISION" ] && "$VENV/bin/pip" install -q --no-deps "$TORCHVISION" pillow
else
  "$VENV/bin/pip" install -q "${TORCH_SPEC:-torch}" "${TORCHVISION_SPEC:-torchvision}"
fi
"$VENV/bin/pip" install -q "transformers>=5,<6" rich pandas pyarrow pyyaml scikit-learn numpy scipy pytest \
  huggingface-hub fsspec xxhash tqdm safetensors tokenizers pillow
# typer without its requirements: recent typer requires pydantic, which the GPU image lacks (so the image's typer is
# one that does not, or a pydantic comes with it: either way the carried pydantic goes first on the path)
"$VENV/bin/pip" install -q --no-deps typer shellingham annotated-doc
fi
echo "[gpu-venv-check] image set installed ($(( $(date +%s) - started )) s): $("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
# nothing of the carried set may be in the venv before the carried wheels go in
if "$VENV/bin/python" -c "import datasets" 2>/dev/null || "$VENV/bin/python" -c "import pydantic" 2>/dev/null \
   || "$VENV/bin/python" -c "import ot" 2>/dev/null; then
  echo "[gpu-venv-check] the image set already brings a carried package; the check would prove nothing" >&2; exit 1
fi
rm -rf "$WHEELS"
PYVER=$PYVER DEST=$WHEELS bash scripts/gpu_wheels.sh
SITE=$(mktemp -d)
export MMBENCH_GPU_SITE=$SITE MMBENCH_WHEELS=$WHEELS PYTHON=$VENV/bin/python
# every module of the package imports with only the image set + the carried wheels (the install of gpu_check.sh)
# PIP_CONFIG_FILE=/dev/null: no machine-wide find-links/index can stand in for a missing carried wheel
export PIP_CONFIG_FILE=/dev/null
grep -v '^#' scripts/gpu_wheels.txt | grep . | xargs "$VENV/bin/python" -m pip install  -q --no-index --no-deps \
  --no-compile --no-cache-dir --upgrade --target "$SITE" --find-links "$WHEELS"
PYTHONPATH="$SITE:$PWD" "$VENV/bin/python" - <<'PY'
import importlib, pkgutil, mmbench
names = [m.name for m in pkgutil.walk_packages(mmbench.__path__, "mmbench.")]
for name in names:
    importlib.import_module(name)
print(f"[gpu-venv-check] imported {len(names)} mmbench modules from {mmbench.__file__}")
PY
bash scripts/gpu_check.sh --device cpu --tiny --out "$OUT"
rm -rf "$SITE"
echo "[gpu-venv-check] passed in $(( $(date +%s) - started )) s"
