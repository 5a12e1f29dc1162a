#!/usr/bin/env bash
# `pip install` as a user does it (issue 20): build the wheel, install it non-editable into a fresh
# venv that reuses .venv's already installed torch & co. (a .pth line, so nothing is downloaded and
# CI stays fast), then from an empty temporary directory check that every module of mmbench/ was
# installed, run every command's --help and a width-1/16 rehearsal, list papers, recipes and
# benchmarks, validate every recipe and render a smoke reproduction of SPP-SCL's Table 4.
# Usage: bash scripts/check_wheel.sh   (CHECK_WHEEL_TABLE=all reproduces every SPP-SCL table)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
BASE_PY=${BASE_PY:-$REPO/.venv/bin/python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mmbench-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
fail() { echo "check_wheel: FAIL: $*" >&2; exit 1; }

# 1. Build from a copy of the working tree (tracked + untracked, not ignored), so build/ and
#    *.egg-info never land in the checkout.
(cd "$REPO" && git ls-files -z -co --exclude-standard) | "$BASE_PY" -c '
import shutil, sys, pathlib
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for name in sys.stdin.buffer.read().decode().split("\0"):
    if name and (src / name).is_file():
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, dst / name)' "$REPO" "$WORK/src"
"$BASE_PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$WORK/src" >/dev/null
WHEEL=$(ls "$WORK"/dist/mmbench-*.whl)

# 2. A fresh venv; .venv's site-packages is appended through a .pth (its own .pth files, among them
#    the editable install of this checkout, are not processed, so `mmbench` can only come from the wheel).
"$BASE_PY" -m venv --without-pip "$WORK/venv"
PY="$WORK/venv/bin/python"
purelib() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
purelib "$BASE_PY" > "$(purelib "$PY")/_mmbench_base_site.pth"
"$PY" -m pip install -q --no-deps --no-index --ignore-installed "$WHEEL" >/dev/null

# 3. Use it from an empty directory, with no mmbench variables set.
mkdir "$WORK/cwd" && cd "$WORK/cwd"
unset MMBENCH_RECIPES MMBENCH_DATA MMBENCH_RUNS MMBENCH_RESULTS PYTHONPATH
export MMBENCH_THREADS=${MMBENCH_THREADS:-1} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
MM="$WORK/venv/bin/mmbench"
where=$("$PY" -c 'import mmbench; print(mmbench.__file__)')
[[ $where == "$WORK/venv/"* ]] || fail "mmbench imports from $where, not from the wheel"
"$MM" --version | grep -Eq '^mmbench [0-9]+\.[0-9]+' || fail "--version: $("$MM" --version)"

# every module of the checkout's mmbench/ is in the installed package (a folder without __init__.py is
# left out by find_packages: issue 30's missing mmbench.rehearsal), and every command's --help runs
site=$(dirname "$where")
missing=$(cd "$REPO" && git ls-files -co --exclude-standard 'mmbench/*.py' | sed 's|^mmbench/||' | while read -r f; do
    [[ -f "$site/$f" ]] || echo "$f"; done)
[[ -z $missing ]] || fail "modules missing from the wheel: $(tr '\n' ' ' <<<"$missing")"
modules=$(cd "$REPO" && git ls-files -co --exclude-standard 'mmbench/*.py' | wc -l)
commands=$("$PY" -c 'from mmbench.cli import app; print(" ".join(c.name or c.callback.__name__ for c in app.registered_commands))')
for command in $commands; do
    "$MM" "$command" --help >/dev/null || fail "mmbench $command --help"
done
"$MM" rehearse baselines/twitter15-bert --steps 1 --batch 2 --device cpu --width-scale 0.0625 | grep -q '"ok": true' \
    || fail "rehearse at width 1/16"

expect_papers=$(ls "$REPO"/recipes/*/paper.yaml | wc -l)
expect_recipes=$(cd "$REPO/recipes" && ls */*.yaml | grep -v -e '/_' -e '/paper.yaml$' | wc -l)
expect_bench=$(ls "$REPO"/benchmarks/*.py | grep -vc '/_' || true)
papers=$("$MM" ls papers | wc -l)
recipes=$("$MM" ls recipes)
bench=$("$MM" bench | wc -l)
[[ $papers -eq $expect_papers ]] || fail "ls papers: $papers papers, the repository has $expect_papers"
[[ $(wc -l <<<"$recipes") -eq $expect_recipes ]] || fail "ls recipes: $(wc -l <<<"$recipes") recipes, the repository has $expect_recipes"
[[ $(cut -f2 <<<"$recipes" | sort -u) == "built-in" ]] || fail "ls recipes: not every recipe is built-in"
[[ $bench -eq $expect_bench ]] || fail "bench lists $bench benchmarks, the repository has $expect_bench"
"$MM" validate | grep -q "^ok: $expect_recipes recipes, $expect_papers papers" || fail "validate"

# a whole table, prepare → train → report, from ./data and ./runs: SPP-SCL's Table 4 (two smoke runs, 8 CPU s;
# ITM's Table 3 took 25 of the check's 57 CPU s); CHECK_WHEEL_TABLE=all reproduces every SPP-SCL table
table=(--table table4); [[ ${CHECK_WHEEL_TABLE:-table4} == all ]] && table=()
out=$("$MM" reproduce sppscl --dataset mvsa-single --smoke "${table[@]}" --device cpu)
grep -q "Table 4: " <<<"$out" || fail "reproduce printed no Table 4"
# Table 4's two-step row: its MVSA-S cells hold numbers (MVSA-M and HFM are other datasets: "not run")
row=$(awk '/Table 4: /{t=1} t && /\| SPP-SCL \(Two-step\)/{print; exit}' <<<"$out")
[[ $(cut -d'|' -f3 <<<"$row") =~ [0-9]+\.[0-9]+\ \(1\) ]] || fail "Table 4 has no two-step cell for MVSA-S: $row"
metrics=$(ls runs/sppscl/mvsa-single/mvsa-single-smoke/seed*/metrics.json | head -1)
[[ -d data/prepared ]] || fail "prepared data did not go to ./data"
"$PY" -c 'import json, sys; e = json.load(open(sys.argv[1]))["environment"]; assert e["mmbench"] == sys.argv[2] and e["git_commit"] is None, e' \
    "$metrics" "$("$PY" -c 'import mmbench; print(mmbench.__version__)')" || fail "metrics.json environment"
echo "check_wheel: ok ($(basename "$WHEEL"): $modules modules, $(wc -w <<<"$commands") commands' --help, rehearse at width 1/16, $papers papers, $expect_recipes recipes, $bench benchmarks, SPP-SCL Table 4 rendered from ./runs)"
