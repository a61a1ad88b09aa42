# Two entry points: `make demo` (the whole method on the synthetic benchmark) and `make test`.
# Both create .venv and install the toolkit on first use. The venv sees the system's packages, so a
# machine that already has torch (a CUDA build, say) keeps it; otherwise torch 2.13.0 is installed,
# which on a CPU-only machine resolves to the local CPU wheel instead of gigabytes of CUDA packages.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dmole-installed
DEMO_OUT ?= dmole-demo
# lmms-eval, for the dmole_lmms plugin and its test, installed without its declared dependencies: they include
# torchvision, which would replace a CPU torch with a CUDA build. These are the packages its evaluation path and its
# command line (pytablewriter, for the results table it prints last) import;
# filelock stays below 4, whose layout lmms-eval 0.7.3 patches (filelock._api).
LMMS_EVAL := lmms-eval==0.7.3
LMMS_EVAL_DEPS := loguru pytz sacrebleu evaluate tenacity "filelock<4" pytablewriter

.PHONY: demo test test-all install clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps "$(LMMS_EVAL)"
	$(BIN)/pip install --quiet $(LMMS_EVAL_DEPS)
	touch $(STAMP)

demo: install
	$(BIN)/dmole demo --out $(DEMO_OUT)

test: install
	$(BIN)/lint-imports
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/python -m pytest -q

test-all: install  # also the slow end-to-end runs (pytest -m slow alone runs only those)
	$(BIN)/lint-imports
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/python -m pytest -q -m ''

clean:
	rm -rf $(VENV) $(DEMO_OUT)
