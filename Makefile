# Two entry points: `make repro` (install + run the whole pipeline on the embedded default) and
# `make test` (install what is missing + run the test suite). Both create/reuse the virtualenv $(VENV).
VENV ?= .venv
PYTHON ?= python3
# On the project machines torch 2.14.1 + torchvision 0.29.1 are served from local wheels (pip's cap);
# a GPU user may bring a matching pair: `make install TORCH_SPEC="torch==X torchvision==Y"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
STAMP := $(VENV)/.spade-installed

.PHONY: install repro test lint bench clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/python -c "import torch, torchvision, diffusers, open_clip, peft, zarr; print('spade env ok: torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $(STAMP)

install: $(STAMP)

repro: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# one intra-op thread by default: the tests use tiny shapes, where thread synchronisation costs more than it gains
test: install
	PATH="$(abspath $(BIN)):$$PATH" OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
