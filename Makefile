# Two commands: `make run` starts the control plane, `make test` runs the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The suite runs against the real services; these are the defaults on this project's machines.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/turnout
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: install system-deps bench-deps run test lint demo clean

$(STAMP): pyproject.toml sdk/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e './sdk[providers]'
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m controlplane.launcher

# The control plane, a plan, live traffic and a candidate that regresses (Ctrl-C stops it).
demo: install
	$(PY) -m controlplane.demo

lint: install
	$(VENV)/bin/ruff check .

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

test: install system-deps lint
	DEBUG=1 DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
		$(VENV)/bin/pytest

clean:
	rm -rf $(VENV) var test-artifacts
