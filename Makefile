# Every target bootstraps the virtual environment itself, so on a fresh machine
# `make run` and `make test` are the only commands a new user needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test stress bench lint typecheck clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[edge,postgresql,speedups,test,dev]'
	touch $(STAMP)

## run: the edge server on the embedded file store (./users), persistence on, background
## generation on (a reloaded chat page resumes its reply); demo upstream unless
## UPSTREAM_BASE_URL is set.
run: $(STAMP)
	PERSIST_TRANSCRIPTS=$${PERSIST_TRANSCRIPTS:-true} DB_URL=$${DB_URL:-file:./users} \
		BACKGROUND_GENERATION=$${BACKGROUND_GENERATION:-true} $(BIN)/python -m edge

## test: the whole suite with coverage floors (SPEC §6: chunkstore 90%, edge 85%).
test: $(STAMP)
	rm -f .coverage .coverage.*
	$(BIN)/python -m pytest --cov --cov-report= -q $(PYTEST_ARGS); rc=$$?; \
		if [ $$rc -eq 5 ]; then rc=0; fi; [ $$rc -eq 0 ] || exit $$rc
	$(BIN)/python -m coverage report --include='chunkstore/*' --fail-under=90
	$(BIN)/python -m coverage report --include='edge/*' --fail-under=85

## stress: the whole suite with the reliability tests at their large sizes (RELIABILITY.md).
stress: $(STAMP)
	STRESS=1 $(BIN)/python -m pytest -q -p no:randomly --timeout=3600 --durations=25 tests

## bench: the performance suites (pytest-benchmark), results in benchmarks/README.md.
bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks --benchmark-only --benchmark-columns=min,median,max,rounds

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check chunkstore edge

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .coverage .coverage.* .pytest_cache .hypothesis .benchmarks
