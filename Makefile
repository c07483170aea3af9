# Two commands from a fresh clone (only Python 3.11, pip and make needed):
#   make demo   set up .venv, then run the workflow on the built-in demo cohort
#   make test   set up .venv, then run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
CORES  ?= 2

.PHONY: setup browser demo test lint report clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/python scripts/demo-data.py config.yaml
	$(BIN)/snakemake --cores $(CORES) --profile profiles/default
	$(BIN)/snakemake --cores 1 --profile profiles/default --report results/report.html

browser:
	sh scripts/install-browser.sh

test: setup browser lint
	$(BIN)/python -m pytest

# The checks CI runs (make test runs them first). snakemake --lint parses the workflow
# with the test configuration (.test/, as the snakemake-workflows do): it writes nothing.
lint: setup
	$(BIN)/ruff check src tests workflow benchmarks scripts
	$(BIN)/ruff format --check src tests workflow benchmarks scripts
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake -s Snakefile --directory .test --configfile .test/config.yaml --lint

clean:
	rm -rf results .snakemake
