# Two commands: `make run` starts the control plane, `make test` runs the whole suite.
# `make test-fast` is the edit-test loop: no test that starts processes, no long simulation.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The suite runs against the real services; these are the defaults on this project's machines.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/turnout
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: install system-deps bench-deps run test test-fast lint demo clean

$(STAMP): pyproject.toml sdk/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e './sdk[providers,plans]'
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m controlplane.launcher

# The control plane, a plan, live traffic and a candidate that regresses (Ctrl-C stops it).
# STORY=quality: a faster, cheaper candidate that answers worse, stopped on quality.
demo: install
	$(PY) -m controlplane.demo $(if $(STORY),--story $(STORY))

# ruff everywhere (its banned imports keep the SDK Django-free); mypy strict on the SDK.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy sdk/src/turnout

# System packages the suite needs: Debian's docker-compose (validates docker/compose.yml) and
# Debian's Chromium (the browser tests drive it through Playwright; no browser download).
system-deps:
	@command -v docker-compose >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; } || \
		echo "warning: docker-compose missing and not root: the compose check will fail"
	@[ -x /usr/bin/chromium ] || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "warning: /usr/bin/chromium missing and not root: the browser tests will be skipped"

# The benchmarks' own system package: Debian's wrk drives bench/bench_server.py (root).
bench-deps: install
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || \
		echo "warning: wrk missing and not root: bench/bench_server.py needs it"

# The suite runs on three pytest-xdist workers on two cores (720-757 s against 786-837 s on two:
# the live tests wait on servers and Celery, which leaves a core idle), a file
# per worker at a time (the simulations' module fixtures are computed once), the files with the
# longest tests first (tests/conftest.py orders them; --no-loadscope-reorder keeps that order
# instead of xdist's by number of tests); each worker has its own test database, Redis database
# and ports (tests/conftest.py). WORKERS=1 runs it in one process.
WORKERS ?= 3
XDIST = $(if $(filter-out 0 1,$(WORKERS)),-n $(WORKERS) --dist loadfile --no-loadscope-reorder)

# The 40 slowest tests are listed at the end of each run: where the suite's time goes.
test: install system-deps lint
	DEBUG=1 DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
		$(VENV)/bin/pytest $(XDIST) --durations=40

# Everything but the `live` tests (servers, workers, benches, child processes) and the `slow`
# simulations; `make test` runs those too. ARGS narrows it: make test-fast ARGS=tests/api
test-fast: install
	DEBUG=1 DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
		$(VENV)/bin/pytest -m "not live and not slow" $(XDIST) $(ARGS)

clean:
	rm -rf $(VENV) var test-artifacts
