PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: install test test-fast test-reliability lint format protos demo bench bench-deps clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

STAMP := $(VENV)/.installed

# `make install` always reinstalls; test, lint and demo install once (and again when the
# project's metadata or C decoder change), so a fresh clone needs nothing but `make test`.
$(STAMP): pyproject.toml setup.py flowpipe/codec/_wire.c flowpipe/codec/_jsonpb.c | $(PY)
	$(MAKE) install

install: $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	@command -v prometheus >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else echo "note: install Debian package 'prometheus' for the metrics tests (sudo apt-get install prometheus)"; fi; }
	@command -v java >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >/dev/null; \
	  else echo "note: install Java 17 for the Spark tests (sudo apt-get install openjdk-17-jre-headless)"; fi; }
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-reliability: $(STAMP)
	$(PY) -m pytest -q -m reliability

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not reliability"

lint: $(STAMP)
	$(BIN)/ruff check flowpipe tests bench tools
	$(BIN)/ruff format --check flowpipe tests bench tools

format: $(STAMP)
	$(BIN)/ruff format flowpipe tests bench tools
	$(BIN)/ruff check --fix flowpipe tests bench tools

protos: $(STAMP)
	$(PY) tools/protogen.py

demo: $(STAMP)
	$(BIN)/flowpipe demo

bench-deps:
	cd bench/peer && npm ci --silent --no-audit --no-fund

bench: $(STAMP) bench-deps
	$(PY) bench/run.py

clean:
	rm -rf build dist *.egg-info flowpipe/*/*.so .pytest_cache
