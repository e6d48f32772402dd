# Two commands for a newcomer: `make run` (install + default pipeline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/mml data synth
	$(BIN)/mml train rgb_ce
	$(BIN)/mml evaluate rgb_ce

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python benchmarks/loader.py
	$(BIN)/python benchmarks/train_step.py

clean:
	rm -rf data checkpoints metrics predictions plots mlruns
