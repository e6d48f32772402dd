# Two commands for a newcomer: `make run` (install + default pipeline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test test-fast lint bench clean

# pip byte-compiles what it installs on one core (about 60 s of a 157-s install here);
# compileall does the same on every core. A file this Python cannot compile (torch ships a
# 3.12-only test helper) is skipped, as pip skips it, so compileall's status is ignored.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -e '.[dev]'
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true
	touch $(STAMP)

install: $(STAMP)

# `dvc repro` with independent stages two at a time (mml/repro.py); `dvc repro` after it finds
# nothing to do. The stages call `mml`: `mml repro` puts the venv's bin first on their PATH.
run: install
	$(BIN)/mml repro --jobs 2

test: install
	$(BIN)/python -m pytest -q

# The unit tier: every test not marked slow (see the marker in pyproject.toml), < 1 min.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python benchmarks/loader.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/flow.py

clean:
	rm -rf data checkpoints metrics predictions plots reports mlruns tuned optuna registry dvc.lock
