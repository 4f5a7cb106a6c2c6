# Set-up and checks. `make test` on a fresh machine installs everything the tests need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_PACKAGES := dataset-fashion-mnist fonts-noto-core fonts-noto-color-emoji unicode-data chromium

.PHONY: setup test bench app clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Installs the project (editable) with its pinned dependencies and the Debian data it uses.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; fi
	touch $@

setup: $(VENV)/.installed

test: setup
	$(BIN)/python -m pytest

# The explorer on the embedded demo library (another: make app ARGS="-- --db FILE").
app: setup
	$(BIN)/streamlit run app.py $(ARGS)

bench: setup
	$(BIN)/python benchmarks/bench_embed.py

clean:
	rm -rf $(VENV) .pytest_cache
