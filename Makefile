# Two entry points for a fresh machine: `make demo` and `make test`. Both idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DATA := data/demo
CORES ?= all

.PHONY: setup demo demo-data test test-fast bench lint clean-demo wheelhouse

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the package with its pinned dependencies

$(DEMO_DATA)/.complete: $(STAMP) $(wildcard pipeline/synthetic/*.py)
	$(BIN)/python -m pipeline synth --out $(DEMO_DATA) --n-train 4 --n-test 2 --height 6144 --width 6144 --seed 0
	touch $@

demo-data: $(DEMO_DATA)/.complete  ## write the synthetic demo data set (Kaggle layout)

demo: $(DEMO_DATA)/.complete  ## set up, write the demo data and run the whole workflow on it
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml --report results/demo/report.html

test: $(STAMP)  ## set up and run the whole test suite
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

test-fast: $(STAMP)  ## the tests without the end-to-end workflow runs
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow"

lint: $(DEMO_DATA)/.complete  ## snakemake --lint (on the demo config and data) and snakefmt, as the tests run them
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --lint --configfile config/demo.yaml
	$(BIN)/snakefmt --check workflow/

wheelhouse: $(STAMP)  ## every pinned wheel (and this package's) in wheelhouse/, for an offline install (Kaggle)
	$(BIN)/python -m pip wheel --quiet --wheel-dir wheelhouse .
	@echo "offline: pip install --no-index --find-links wheelhouse hubmap-glomeruli-pipeline"

clean-demo:  ## remove the demo data and results
	rm -rf $(DEMO_DATA) results/demo

.PHONY: real-bench real-bench-cpu
REAL_BENCH_ARGS ?=

real-bench: $(STAMP)  ## real labels: AIDPATH tiles as mosaic slides, the workflow, Dice per slide and tile
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/real.py --cores $(CORES) $(REAL_BENCH_ARGS)

real-bench-cpu: $(STAMP)  ## the same with the stronger CPU config bench/real-cpu.yaml (25-37 min on 2 cores)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/real.py --cores $(CORES) --config bench/real-cpu.yaml \
		--out /tmp/real-bench-cpu $(REAL_BENCH_ARGS)
