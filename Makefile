# The two commands of the README:
#   make run   set everything up, then run the daemon on ./inbox -> ./outbox
#   make test  set everything up, then run the whole test suite
# Everything lives in ./.venv, ./.models (offline model weights) and ./state.

PYTHON ?= python3
VENV   ?= .venv
MODELS ?= $(CURDIR)/.models
STATE  ?= $(CURDIR)/state
BIN     = $(VENV)/bin

.PHONY: run test models setup setup-test bench clean

$(BIN)/ocr-inbox: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

setup: $(BIN)/ocr-inbox

# Tests also exercise Paddle's own engine (the ppocrv4-mobile profile) and a Ray cluster.
$(VENV)/.test-deps: $(BIN)/ocr-inbox
	$(BIN)/python -m pip install -q -e '.[test,paddle,ray]'
	touch $@

setup-test: $(VENV)/.test-deps

$(MODELS)/.installed: $(BIN)/ocr-inbox
	$(BIN)/ocr-inbox models install --all --models-dir $(MODELS) --state-dir $(STATE)
	touch $@

models: $(MODELS)/.installed

run: setup models
	mkdir -p inbox outbox
	$(BIN)/ocr-inbox run --inbox ./inbox --outbox ./outbox --state-dir $(STATE) --models-dir $(MODELS)

test: setup-test models
	OCR_INBOX_MODELS_DIR=$(MODELS) $(BIN)/python -m pytest $(PYTEST_ARGS)
	$(BIN)/python -m mypy

bench: setup models
	OCR_INBOX_MODELS_DIR=$(MODELS) $(BIN)/python bench/bench_ocr.py

clean:
	rm -rf $(VENV) $(MODELS) $(STATE) .pytest_cache
