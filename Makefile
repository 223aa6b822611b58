# kpi-sidecar: `make run` and `make test` are the two set-up commands (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
APT_PACKAGES := nats-server prometheus
# What running needs from Debian: nats-server (`make run` starts one when none answers upstream).
# What the tests add: prometheus (promtool), nodejs/npm (nats.js), golang-go and
# golang-github-nats-io-go-nats-dev (nats.go, built without a module registry), chromium and
# chromium-driver (the admin page's browser test).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run-deps system-deps node-deps test lint fmt run rules bench soak clean

# setup.py and the C source too: a change rebuilds the optional C scanner (proxy/nats/_speedups.c).
# .runtime: what `make run` needs; .installed: that plus the test tools (`make install`, `make test`).
$(VENV)/.runtime: pyproject.toml setup.py proxy/nats/_speedups.c
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed: $(VENV)/.runtime
	$(PIP) install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

run-deps:
	@if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then \
	  echo "installing Debian package: nats-server"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null; \
	fi

system-deps: run-deps
	@missing=""; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v node >/dev/null || missing="$$missing nodejs npm"; \
	command -v go >/dev/null || missing="$$missing golang-go"; \
	[ -d /usr/share/gocode/src/github.com/nats-io/nats.go ] || missing="$$missing golang-github-nats-io-go-nats-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@browser=""; \
	[ -x /usr/bin/chromium ] || browser="$$browser chromium"; \
	[ -x /usr/bin/chromedriver ] || browser="$$browser chromium-driver"; \
	if [ -n "$$browser" ]; then \
	  echo "installing Debian packages:$$browser"; \
	  ( $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$browser >/dev/null ) \
	    || echo "could not install$$browser: the admin page's browser test (tests/ui) will be skipped"; \
	fi

tests/js/node_modules/.installed: tests/js/package.json
	cd tests/js && npm install --no-audit --no-fund --silent
	touch $@

node-deps: tests/js/node_modules/.installed

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

fmt: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: install system-deps node-deps lint
	$(VENV)/bin/pytest

run: $(VENV)/.runtime run-deps
	@$(PY) -m proxy.cli.devrun

# k8s/base/prometheusrule.yaml is generated from prometheus/alerts.yaml (a test checks they agree).
rules: $(VENV)/.runtime
	$(PY) prometheus/render_prometheusrule.py

# Hub, leaf node and sidecar side by side (~5 min; `$(PY) -m bench.run --quick` for ~1 min); writes
# docs/benchmarks.md. py-spy profiles the sidecar (skipped with a note if it cannot be installed).
bench: install system-deps
	@[ -x $(VENV)/bin/py-spy ] || $(PIP) install -q py-spy || echo "py-spy unavailable: no profile"
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) tests/js/node_modules .pytest_cache .ruff_cache .hypothesis
