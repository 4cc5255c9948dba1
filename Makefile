# `make run` and `make test` bootstrap .venv on a fresh machine, then run the demo / the test suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: install run test lint bench chaos clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU build locally; an unpinned torch would pull gigabytes of CUDA packages.
	$(PIP) torch==2.13.0
	$(PIP) -e '.[worker,dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/spotgen dev --demo

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python tests/benchmark.py

# Random SIGTERM/SIGKILL of busy workers under load; checks nothing is lost, doubled or changed (tests/chaos.py).
chaos: install
	$(BIN)/python -m tests.chaos

clean:
	rm -rf $(VENV) .spotgen out .pytest_cache .ruff_cache
