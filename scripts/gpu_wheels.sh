#!/usr/bin/env bash
# Download the wheels of scripts/gpu_wheels.txt (what the GPU image lacks) into .whl/ (git-ignored), on a
# machine with registry access, for the GPU machine's CPython 3.12 x86-64 (PYVER=3.11 etc. for another
# interpreter, e.g. the venv check here). Send .whl/ with the repository (`run` carry: .whl); then
# scripts/gpu_check.sh installs them offline. The 3.12 files are checked against scripts/gpu_wheels.sha256.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
DEST=$(realpath -m "${DEST:-.whl}")
mkdir -p "$DEST"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
  -d "$DEST" -r scripts/gpu_wheels.txt
if [ "$PYVER" = 3.12 ]; then
  (cd "$DEST" && sha256sum -c --quiet "$OLDPWD/scripts/gpu_wheels.sha256")
fi
du -sh "$DEST"
