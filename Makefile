# `make run` and `make test` bootstrap .venv on a fresh machine, then run the demo / the test suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: install run test test-slow test-cpus lint bench bench-gpu chaos faults clean

# torch first, pinned: the CPU build locally; an unpinned torch would pull gigabytes of CUDA packages. checkov
# (tests/infra/test_infra.py) gets a venv of its own: it pins boto3, networkx and packaging below ours; it installs
# in the background while the main venv does (two cores: the wait is the longer of the two, not the sum). So does the
# AWS SAM CLI (.venv/samcli: its own parser reads docs/deploy.md's sam commands in tests/infra/test_deploy_commands.py;
# it pins click 8.1), after checkov in the same background job, so that the two never share the second core (measured:
# about 30 s each alone, both well inside the main venv's install). Then the Karpenter, KEDA and Prometheus Operator
# schemas (tests/schemas/README.md), locked by package-lock.json.
$(STAMP): pyproject.toml constraints.txt constraints-checkov.txt constraints-samcli.txt tests/schemas/package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	set -e; \
	{ test -x $(VENV)/checkov/bin/python || $(PYTHON) -m venv $(VENV)/checkov; \
	  $(VENV)/checkov/bin/pip install --quiet --disable-pip-version-check -c constraints-checkov.txt checkov; \
	  test -x $(VENV)/samcli/bin/python || $(PYTHON) -m venv $(VENV)/samcli; \
	  $(VENV)/samcli/bin/pip install --quiet --disable-pip-version-check -c constraints-samcli.txt aws-sam-cli; } & \
	checkov=$$!; \
	$(PIP) torch==2.13.0; \
	$(PIP) -e '.[worker,dev,infra]'; \
	$(PIP) --no-deps spandrel einops; \
	npm ci --prefix tests/schemas --no-audit --no-fund --ignore-scripts --loglevel=error; \
	wait $$checkov
	touch $(STAMP)

# promtool (from Debian's prometheus package) for the metrics and alert-rule checks, which fail without it. A machine
# whose apt lists are empty cannot download anything until `apt-get update` has run, so that is the second try.
$(BIN)/promtool: | $(STAMP)
	cd $(VENV) && rm -rf usr prometheus_*.deb && \
		{ apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus; }; } && \
		dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool && mv usr/bin/promtool bin/promtool && \
		rm -rf usr prometheus_*.deb
	$@ --version >/dev/null

# Everything the tests need; the demo needs only the Python packages.
install: $(STAMP) $(BIN)/promtool

run: $(STAMP)
	$(BIN)/spotgen dev --demo

lint: install
	$(BIN)/ruff check .

# Four test processes (pytest-xdist) on two cores: most tests wait on real workers, and the waits overlap
# (measured on 2 cores: 14 min serial, 9.6 with two, 7.4 with three; later, with the worker zygote, 6:10 with
# three and 5:35 with four). Whole modules go to one process, and the modules that share a stack together, so that
# each stack starts once (--dist loadscope: tests/scheduling.py). The workers the tests start are forked from one
# process that has imported the worker's code (tests/zygote.py).
# The slowest tests are printed, so that their cost stays in view.
# The `slow` tests (minutes of CPU each: torch.compile on the CPU, the GPU benchmark's script, the small chaos and
# fault harness runs) are left to `make test-slow`, which runs everything.
# Python's bytecode cache is on for the tests, also where the environment turns it off (PYTHONDONTWRITEBYTECODE):
# each of the run's forty-odd Python processes imports most of the project, and compiling it again in each cost
# about 4 s of CPU per test process (measured with `pytest --collect-only`). The sources are compiled once before
# pytest starts (1 s); __pycache__ is in .gitignore and .dockerignore.
PYTEST := PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n 4 --dist loadscope --durations=15
COMPILE := PYTHONDONTWRITEBYTECODE= $(BIN)/python -m compileall -q spotgen runtime pipelines lambdas tests
test: install lint
	$(COMPILE)
	$(PYTEST) -m "not slow"

test-slow: install lint
	$(COMPILE)
	$(PYTEST)

# The pipeline, model and resume tests under each ATEN_CPU_CAPABILITY (default, avx2, avx512 where the CPU has
# it) with OMP_NUM_THREADS 1 and 2: proof that no test depends on the CPU's kernels (tests/harness/cpu_matrix.py).
# Every cell runs; a table of each cell's counts and time ends it, and it fails if any cell failed.
test-cpus: install
	$(BIN)/python -m tests.harness.cpu_matrix

bench: install
	$(BIN)/python -m tests.harness.benchmark

# Plain diffusers against the worker end to end on full-size random-weight SD 1.5 and SDXL, on a CUDA GPU
# (docs/benchmarks.md, "GPU"); without one it runs the tiny models on the CPU, which checks the script only.
bench-gpu: install
	$(BIN)/python -m tests.harness.bench_gpu

# Random SIGTERM/SIGKILL of busy workers under load; checks nothing is lost, doubled or changed
# (tests/harness/chaos.py).
chaos: install
	$(BIN)/python -m tests.harness.chaos

# Outages, cut connections, latency and throttling between the workers and AWS while jobs run; checks the same,
# and that no worker wedges (tests/harness/faults.py).
faults: install
	$(BIN)/python -m tests.harness.faults

clean:
	rm -rf $(VENV) .spotgen out .pytest_cache .ruff_cache tests/schemas/node_modules
