# The two entry points a newcomer needs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench bench-quick bench-stream bench-cluster chaos clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m sessionvisor demo

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check src

typecheck: $(STAMP)
	$(BIN)/mypy src

LINTED := $(wildcard src tests examples bench chaos)

# The real frontend clients (npm `ai`, `@ag-ui/client`) the tests in tests/frontend run
# with Node; reinstalled from the committed lockfile whenever it changes.
FRONTEND := tests/frontend
$(FRONTEND)/node_modules/.installed: $(FRONTEND)/package.json $(FRONTEND)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd $(FRONTEND) && npm ci --no-audit --no-fund && touch node_modules/.installed; \
	else \
		echo "npm not found: the tests in $(FRONTEND) will skip (CI needs Node 20 and npm)"; \
	fi

test: $(STAMP) $(FRONTEND)/node_modules/.installed
	bash scripts/test-services.sh
	$(BIN)/ruff check $(LINTED)
	$(BIN)/mypy src
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/run.py

bench-quick: $(STAMP)
	$(BIN)/python bench/run.py --quick

# W7: 1,000 SSE clients over real uvicorn, beside a bare Starlette floor (docs/operations.md)
bench-stream: $(STAMP)
	$(BIN)/python bench/stream.py --repeat 3

# Cluster mode: W2/W3 against one local supervisor, and failover after kill -9 (README)
bench-cluster: $(STAMP)
	$(BIN)/python bench/cluster.py

# Randomized fault checking (chaos/): real servers, faults injected, history checked.
# Single mode, SQLite then PostgreSQL, then three nodes on PostgreSQL with their own Redis
# (every fault, PostgreSQL black holes included), MINUTES of client time each. `make test`
# runs a bounded version (tests/test_chaos.py).
MINUTES ?= 5
chaos: $(STAMP)
	$(BIN)/python -m chaos.run --minutes $(MINUTES)
	$(BIN)/python -m chaos.run --minutes $(MINUTES) --store postgres --mode cluster

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
