# The whole set-up on a fresh machine: `make demo` and `make test` install what they need when it is
# missing (a virtual environment in .venv, gfortran for py3nj, the pinned CPU torch first, then this
# package) and are quick when it is present.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.segvolpipe-installed
PYTEST_ARGS ?= -q

.PHONY: all install demo test lint bench-preprocess clean-data

all: install

$(STAMP): pyproject.toml constraints.txt
	@if ! command -v gfortran >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "gfortran is missing (py3nj, needed by escnn, compiles Fortran): installing it with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gfortran >/dev/null; \
	  else \
	    echo "error: gfortran is missing; py3nj (needed by escnn) compiles Fortran." >&2; \
	    echo "       Install it as root (Debian/Ubuntu: 'sudo apt-get install -y gfortran'; conda: 'conda install -c conda-forge gfortran')," >&2; \
	    echo "       then run make again." >&2; \
	    exit 2; \
	  fi; \
	fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt "torch==2.13.0"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	@# an editable install compiles nothing; byte-compile now so start-up does not (PYTHONDONTWRITEBYTECODE machines)
	$(BIN)/python -m compileall -q segvolpipe
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/segvol demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check segvolpipe tests benchmarks

bench-preprocess: install
	$(BIN)/python benchmarks/bench_preprocess.py

clean-data:
	rm -rf raw_data/Dataset* preprocessed/Dataset* results/Dataset*
