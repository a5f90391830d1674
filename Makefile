# Two entry points: `make bench` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: bench test setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned, so that no other package pulls a different (CUDA) build.
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test]" "torch==2.13.0"
	touch $(STAMP)

setup: $(STAMP)

bench: $(STAMP)
	$(BIN)/unlearnkit bench --benchmark mnist --scenario class --out docs/results/mnist-class
	$(BIN)/unlearnkit bench --benchmark mnist --scenario random --out docs/results/mnist-random

test: $(STAMP)
	bash scripts/ensure-chromium.sh
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
