# The two commands of the README. Both create .venv on first use; nothing is installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_SECONDS ?= 20

.PHONY: run test lint typecheck pytest clean systemd-analyze

$(BIN)/ingest: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.dev: $(BIN)/ingest
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

run: $(BIN)/ingest
	$(BIN)/ingest run --config config.toml --duration $(RUN_SECONDS)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

# The unit-file tests run `systemd-analyze verify`; install it where we can (root with apt).
systemd-analyze:
	@command -v systemd-analyze >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && apt-get install -y -qq systemd >/dev/null; } \
		|| echo "note: systemd-analyze is missing; install the 'systemd' package for the unit tests"

pytest: $(VENV)/.dev systemd-analyze
	$(BIN)/pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
