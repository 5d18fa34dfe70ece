# aimray: two commands on a fresh machine, each doing its own set-up (venv in .venv, dependencies, assets).
#   make demo   the main job on the embedded default (SmolLM2-135M-Instruct, offline tasks)
#   make test   the whole test suite (what CI runs), in two pytest workers (TEST_WORKERS=0: one process)
# GPU users: make venv TORCH_SPEC=torch==2.13.0 TORCH_INDEX=https://download.pytorch.org/whl/cu128
# (any CUDA build of torch >= 2.4 works; the default installs the CPU wheel).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo
TEST_WORKERS ?= 2

.PHONY: venv assets demo test lint format clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "aimray needs Python >= 3.11: set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

assets: $(STAMP)
	$(PY) -m aimray.assets fetch

demo: assets
	$(PY) sweeps/tune_controller.py --config sweeps/configs/demo.yaml --out $(DEMO_OUT) $(if $(wildcard $(DEMO_OUT)/ray/tune),--resume)

test: assets
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
