# `make run` and `make test` each bootstrap .venv on a fresh machine; nothing else is needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
POSTGRES_URL := postgresql+psycopg://postgres@127.0.0.1:5432/test

.PHONY: run test lint bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/oms dev

# The read-model tests also run on PostgreSQL when it answers on 127.0.0.1:5432 (each run
# creates and drops its own database, so concurrent runs do not collide).
test: $(STAMP)
	@if [ -z "$$OMS_TEST_POSTGRES_URL" ] && $(BIN)/python -c "import socket; socket.create_connection(('127.0.0.1', 5432), 1)" 2>/dev/null; then \
		export OMS_TEST_POSTGRES_URL='$(POSTGRES_URL)'; echo "PostgreSQL answers: read-model tests run on it too"; \
	fi; \
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy .

# `make bench BENCH_ARGS="--profile"`; `python -m bench.lifecycle --help` lists the options.
bench: $(STAMP)
	$(BIN)/python -m bench.lifecycle $(BENCH_ARGS)
	$(BIN)/python -m bench.authority
	$(BIN)/python -m bench.compliance
	$(BIN)/python -m bench.fund_check

clean:
	rm -rf $(VENV) .oms .pytest_cache .mypy_cache .ruff_cache
