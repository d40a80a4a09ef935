# Two commands do everything (see README): `make book` and `make test`.
# Each creates .venv on first use and installs the package with its extras.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SHELL  := /bin/bash

# Use the shared real datasets when they sit beside the clone; otherwise the package default.
MEDSEG_DATA_ROOT ?= $(if $(wildcard ../shared/datasets/msd),$(abspath ../shared/datasets),)
export MEDSEG_DATA_ROOT
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONHASHSEED := 0

.PHONY: all install book test test-fast lint lab clean publish

all: book

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[book,dev]"
	touch $@

install: $(BIN)/.installed

## Build the book, executing every chapter (HTML in _build/html).
## Chapters already executed by `make test` with the same inputs come from its cache (see _config.yml).
book: install
	$(BIN)/python -m medseg_tutorial.tools.notebooks --prepare
	$(BIN)/jupyter-book build . -W --keep-going

## Run the whole test suite: unit tests, real-data tests and every chapter (conftest.py: one test per
## notebook, executed as the book build executes it and cached for it; `--nbval-lax` for cell by cell).
## Two workers, one torch thread each (two threads per worker would fight over 2 cores);
## --dist loadfile keeps a test file's module fixtures on one worker; --no-loadscope-reorder keeps the
## collection order (chapters first: testpaths in pyproject.toml), so the longest items (chapters, up to
## 2.5 min) start first rather than last, where xdist's default order (most tests first) puts them.
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

lint: install
	$(BIN)/ruff check .

## Open the chapters in JupyterLab.
lab: install
	$(BIN)/python -m pip install --quiet jupyterlab
	$(BIN)/jupyter lab book/

## Publish the book to the gh-pages branch by hand (CI publishes every push to main).
publish:
	scripts/publish.sh

clean:
	rm -rf _build .pytest_cache
