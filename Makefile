# The two commands a newcomer needs: `make run` and `make test`. Both install what
# they need into .venv first, with the exact versions pinned in constraints.txt.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install services test-services db run worker beat web lint test test-unit test-integration bench lock clean

$(INSTALLED): setup.cfg constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --constraint constraints.txt --editable '.[test,dev]'
	touch $@

install: $(INSTALLED)  ## virtualenv with the pinned dependencies

services:  ## start PostgreSQL, Redis, RabbitMQ if down (Debian service, else docker compose), or say how
	scripts/ensure-services

test-services:  ## the same for what the tests use (TEST_DATABASE_URL, TEST_REDIS_URL)
	scripts/ensure-services --for-tests

db: install services  ## create the database if missing, migrate it to head
	$(BIN)/flask --app ingestor db upgrade

run: db  ## web (gunicorn on :5000), worker and beat, from the Procfile
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/honcho start --procfile Procfile web worker beat

lint: install  ## the gate CI runs first: ruff check, ruff format --check, mypy (pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install test-services  ## every test: unit, then integration against the real services
	$(BIN)/pytest

test-unit: install
	$(BIN)/pytest -m "not integration"

test-integration: install test-services
	$(BIN)/pytest -m integration

lock:  ## re-pin constraints.txt from a fresh resolution of setup.cfg
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet '.[test,dev]'
	.venv-lock/bin/pip freeze --exclude pulse-ingestor | grep -v '^-e ' > constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

bench: install services  ## measure the real system on this machine (python -m bench.run --help for sizes)
	$(BIN)/python -m bench.run $(BENCH_ARGS)
