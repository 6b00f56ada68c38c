# Two entry points for a newcomer: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# CPU torch build; pip takes it from the local wheel cache where one exists.
TORCH_SPEC ?= torch==2.13.0
# Two installs in one venv: what serving needs (`make run`), then the test extras (`make test`).
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed

.PHONY: install install-run lint test test-browser test-mcore-oldest test-upstream oracle-venv run clean

$(RUN_STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ./client
	$(PIP) install -e .
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(PIP) install -e ".[test]"
	touch $(STAMP)

install-run: $(RUN_STAMP)

install: $(STAMP)

test: $(STAMP) lint test-browser
	$(PY) -m pytest tests

# The status page's test opens it in a real headless browser: Debian's Chromium, installed here
# when it is missing and we are root with apt-get. Elsewhere that test skips (under CI=true it fails).
test-browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
	else \
		echo "chromium is not installed (apt-get install chromium as root): the status page's browser test will skip"; \
	fi

# The library against the oldest megatron-core we support (the range in pyproject.toml), in a venv
# of its own: the compatibility and library tests.
MCORE_OLDEST ?= 0.15.3
OLDEST_VENV ?= .venv-mcore-oldest
OLDEST_STAMP := $(OLDEST_VENV)/.installed-$(MCORE_OLDEST)

$(OLDEST_STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/pip install --upgrade pip setuptools wheel
	$(OLDEST_VENV)/bin/pip install "$(TORCH_SPEC)"
	$(OLDEST_VENV)/bin/pip install -e ./client
	$(OLDEST_VENV)/bin/pip install -e ".[test]" "megatron-core==$(MCORE_OLDEST)"
	touch $(OLDEST_STAMP)

test-mcore-oldest: $(OLDEST_STAMP)
	$(OLDEST_VENV)/bin/python -m pytest tests/compat tests/unit/test_pickle_safety.py tests/unit/test_run_config.py \
		tests/unit/test_layout.py tests/unit/test_dtypes.py tests/unit/test_distributed_context.py tests/unit/test_tokenizer.py

# What the project saves, loaded by the REAL upstream Megatron Bridge (../shared/oracle, a venv of
# its own: Megatron Bridge 0.3.1 on megatron-core 0.16.1, CPU) and compared with the fixtures'
# upstream references. Needs ../shared beside the checkout (a developer's and CI's layout).
ORACLE_DIR ?= ../shared/oracle
ORACLE_VENV ?= .venv-oracle
ORACLE_STAMP := $(ORACLE_VENV)/.installed

$(ORACLE_STAMP): $(ORACLE_DIR)/setup_venv.sh $(ORACLE_DIR)/requirements-oracle.lock.txt
	rm -rf $(ORACLE_VENV)
	PYTHON=$(PYTHON) bash $(ORACLE_DIR)/setup_venv.sh $(ORACLE_VENV)
	touch $(ORACLE_STAMP)

oracle-venv: $(ORACLE_STAMP)

# Only the checks that need the upstream venv (`make test` runs them too once it exists).
test-upstream: $(STAMP) $(ORACLE_STAMP)
	MEGALOAD_REQUIRE_ORACLE=1 MEGALOAD_ORACLE_PYTHON=$(abspath $(ORACLE_VENV))/bin/python $(PY) -m pytest tests/upstream \
		tests/compat/test_hf_view.py tests/compat/test_hf_forward.py

# `make run`: serve on 127.0.0.1:8000 (MEGALOAD_* settings apply, e.g. MEGALOAD_PORT=9000 make run).
# With no checkpoint root configured it serves the embedded demo checkpoint, written on first
# start into MEGALOAD_DATA_DIR (default ./data), and saves into MEGALOAD_DATA_DIR/saves unless
# save roots are configured. Extra `megaload serve` flags: make run ARGS="--log-format json".
# It installs what serving needs, not the test extras; its log ends with "megaload ready on URL".
MEGALOAD_DATA_DIR ?= data
ARGS ?=

run: $(RUN_STAMP)
	@$(PY) -m megaload.demo --data-dir "$(MEGALOAD_DATA_DIR)" --serve $(ARGS)

clean:
	rm -rf $(VENV) $(OLDEST_VENV) $(ORACLE_VENV) build *.egg-info service/*.egg-info client/*.egg-info

# Lint (CI runs it): ruff over the tree (rules and import order in pyproject.toml), mypy over the client.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --config-file client/pyproject.toml client/megaload_client
