# Every target runs the same commands the README shows. GPU users pick their torch build, e.g.
#   make install TORCH_SPEC="torch==2.9.1" TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# torchvision is never installed: svlm uses the PIL image processors.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.svlm-installed

.PHONY: install test lint format demo bench clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-runs when pyproject.toml changes. torch goes first so the pinned build wins over any later resolution.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(BIN)/python -m pip install -e ".[dev]"
	@# The optional Triton kernels are tested under TRITON_INTERPRET=1; without triton those tests skip.
	$(BIN)/python -m pip install -e ".[triton]" || echo "triton could not be installed: its kernel tests will be skipped"
	touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/pytest

demo: install
	$(BIN)/svlm test --config configs/demo.yaml

bench: install
	@# PyPI sparsevlm for the side-by-side run; --no-deps so it can never replace the pinned torch.
	$(BIN)/python -m pip install --no-deps "sparsevlm==0.1.3" || echo "sparsevlm unavailable: the comparison is skipped"
	$(BIN)/svlm bench --config configs/bench.yaml

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
