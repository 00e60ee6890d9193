# The two set-up commands: `make run` and `make test`. Both create .venv when
# it is missing; nothing else needs to be installed beforehand but Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= etc/winchester.yaml
PYTEST_ARGS ?=

.PHONY: run test bench clean venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Installed when pyproject.toml changes, not on every run.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed

SAMPLES ?= etc/samples/nova-notifications.jsonl.gz

# Check the configuration, create or upgrade the schema, then serve (API and
# intake + worker) and load the bundled sample notifications through the HTTP
# intake. Ctrl-C stops it.
run: $(VENV)/.installed
	$(BIN)/winchester check -c $(CONFIG)
	$(BIN)/winchester db upgrade -c $(CONFIG)
	$(BIN)/winchester serve -c $(CONFIG) --clock event --load $(SAMPLES)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/timex.py

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
