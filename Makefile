# make train: virtual environment + project + the quickstart (ViT on scikit-learn's digits, ~3 min on 2 CPU cores).
# make test:  the same environment + the test extra (torch, timm for parity) + the whole test suite.
SHELL := /bin/bash
VENV ?= .venv
WORKDIR ?= workdirs/quickstart
CONFIG ?= configs/quickstart.py
PYTEST_ARGS ?=

# The first Python >= 3.12 on the PATH or under pyenv (jax >= 0.11 needs 3.12).
PYTHON ?= $(shell for p in python3.14 python3.13 python3.12 python3 $$HOME/.pyenv/versions/3.1[2-9]*/bin/python3; do \
  command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null \
  && { command -v $$p; break; }; done)

.PHONY: train test venv clean

$(VENV)/.installed: pyproject.toml
	@if [ -z "$(PYTHON)" ]; then echo "error: no Python >= 3.12 found (jax >= 0.11 needs it); install one (e.g. 'pyenv install 3.12') or run 'make PYTHON=/path/to/python3.12'" >&2; exit 1; fi
	@echo "Using $(PYTHON) ($$($(PYTHON) --version))"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

train: $(VENV)/.installed
	$(VENV)/bin/python train.py --config=$(CONFIG) --workdir=$(WORKDIR)
	$(VENV)/bin/python eval.py --config=$(CONFIG) --workdir=$(WORKDIR)

test: $(VENV)/.installed-test
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) workdirs
