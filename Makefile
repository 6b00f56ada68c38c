# Two entry points for a newcomer: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# CPU torch build; pip takes it from the local wheel cache where one exists.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test run clean

$(STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ./client
	$(PIP) install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

run: $(STAMP)
	@echo "make run: the service entry point is filed separately (issue: ship it)."

clean:
	rm -rf $(VENV) build *.egg-info service/*.egg-info client/*.egg-info
