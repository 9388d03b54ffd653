# Two commands matter:  `make run` (set up + serve the bundled data)  and  `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PORT    ?= 8000
# Self-tuning search time on a fresh store (`recsys tune` later refines with a larger budget).
TUNE_BUDGET ?= 60s
export RECSYS_TEST_DATABASE_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
export RECSYS_TEST_REDIS_URL    ?= redis://127.0.0.1:6379/15

.PHONY: install run test lint format services clean

$(BIN)/recsys: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(BIN)/recsys

# Embedded defaults: SQLite file + in-process cache under ./instance, and a local admin token
# for the console (instance/admin_token, printed once; RECSYS_ADMIN_TOKEN wins). Idempotent: a second
# `make run` skips the import and training that are already done.
run: install
	$(BIN)/recsys db upgrade
	$(BIN)/recsys import online-retail --if-empty --started-by make-run
	$(BIN)/recsys train --if-missing --tune --tune-budget $(TUNE_BUDGET) --started-by make-run
	$(BIN)/recsys serve --local-admin-token --bind 127.0.0.1:$(PORT)

services:
	./scripts/ensure_services.sh
	./scripts/ensure_browser.sh
	./scripts/ensure_spark.sh

test: install services
	$(BIN)/pytest -q

# Import layering and cycles (pyproject.toml [tool.importlinter]); copied blocks (pylint).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/pylint --disable=all --enable=duplicate-code recsys strategies features

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) instance .pytest_cache .ruff_cache
