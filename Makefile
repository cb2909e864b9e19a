PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: install test test-fast test-reliability lint format protos demo bench bench-deps clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	@command -v prometheus >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else echo "note: install Debian package 'prometheus' for the metrics tests (sudo apt-get install prometheus)"; fi; }

test: $(PY)
	$(PY) -m pytest -q

test-reliability: $(PY)
	$(PY) -m pytest -q -m reliability

test-fast: $(PY)
	$(PY) -m pytest -q -m "not slow and not reliability"

lint: $(PY)
	$(BIN)/ruff check flowpipe tests bench tools
	$(BIN)/ruff format --check flowpipe tests bench tools

format: $(PY)
	$(BIN)/ruff format flowpipe tests bench tools
	$(BIN)/ruff check --fix flowpipe tests bench tools

protos: $(PY)
	$(PY) tools/protogen.py

demo: install
	$(BIN)/flowpipe demo

bench-deps:
	cd bench/peer && npm ci --silent --no-audit --no-fund

bench: $(PY) bench-deps
	$(PY) bench/run.py

clean:
	rm -rf build dist *.egg-info flowpipe/*/*.so .pytest_cache
