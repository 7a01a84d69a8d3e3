# Two commands set everything up on a fresh machine:
#   make train   -- the main job on the embedded default
#   make test    -- the test suite (what CI runs)
#   make test-fast -- everything not marked slow, on every core (pytest-xdist)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: train test test-fast bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# --no-compile: byte-compiling every installed package is ~14 of the install's ~38 s;
# Python compiles only the modules it imports, on first use
$(VENV)/.core: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q --no-compile -e .
	touch $@

$(VENV)/.test: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(VENV)/.core $@

train: $(VENV)/.core
	$(VENV)/bin/jaxrl-lm train --config launch/configs/tictactoe.yaml --out runs/tictactoe --resume $(ARGS)

# two workers: the suite is bound by XLA compiles, which are single-threaded
test: $(VENV)/.test
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

test-fast: $(VENV)/.test
	$(PY) -m pytest -q -m "not slow" -n auto $(PYTEST_ARGS)

bench: $(VENV)/.test
	$(VENV)/bin/jaxrl-lm bench envs

clean:
	rm -rf $(VENV) runs
