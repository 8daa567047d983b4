# One-command entry points. Everything installs into .venv/ from the package registry.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export GRADIO_ANALYTICS_ENABLED := False
export DISABLE_VERSION_CHECK := 1

.PHONY: setup install browser demo loop-demo test clean-runs

setup: $(BIN)/python

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(STAMP)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev]"
	touch $(STAMP)

# Debian's Chromium, its driver and CJK fonts for the browser tests (needs root and apt; skipped otherwise).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null && fc-list 2>/dev/null | grep -qi "Noto Sans CJK"; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-noto-cjk >/dev/null) \
		|| echo "warning: could not install chromium; browser tests will be skipped"; \
	else echo "warning: not root or no apt-get; browser tests will be skipped"; fi

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash run_sft.sh demo

loop-demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash loop_demo.sh

test: install browser
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

clean-runs:
	rm -rf runs/demo models/tiny-llama3
