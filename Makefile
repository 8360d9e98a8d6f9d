# wsrouter: `make run` starts a demo router, `make test` runs the whole suite.
# Both create .venv and install the package first; nothing needs doing by hand.

PYTHON ?= python3
CC ?= cc
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REBIND := src/wsrouter/rebind/rebind.so
FRAMES := src/wsrouter/ws/_frames.abi3.so
DEMO_PORT ?= 8080

# The twistd plugins live in src/twisted/plugins, so src on the path (the
# editable install's .pth, or this PYTHONPATH) is all twistd needs to find them.
export PYTHONPATH := $(CURDIR):$(CURDIR)/src

SYSTEM_DEPS := .cache/system-deps.done

.PHONY: run test lint typecheck bench soak install system-deps clean conformance conformance-setup fuzz

install: $(STAMP) $(REBIND) $(FRAMES)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $@

$(REBIND): src/wsrouter/rebind/rebind.c
	$(CC) -shared -fPIC -O2 -Wall -Wextra -o $@ $< -ldl

# The compiled frame codec (wsrouter.ws.codec): optional, so a failed build
# (no compiler, no Python headers) only warns; the pure-Python path is used
# and `make test` tries again after system-deps has installed the headers.
$(FRAMES): src/wsrouter/ws/_frames.c | $(BIN)/python
	$(CC) -shared -fPIC -O2 -Wall -Wextra \
		-I"$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" -o $@ $< \
		|| echo "frames: could not build $@; wsrouter uses its pure-Python frame codec"

# The demo: a shell in the browser behind a fresh random token (in the
# printed URL's #fragment, never sent to the server), and the echo box.
run: install
	@mkdir -p .cache/demo && (umask 077 && $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(24))' > .cache/demo/token)
	@echo "wsrouter demo: open http://127.0.0.1:$(DEMO_PORT)/#token=$$(cat .cache/demo/token)"
	@echo "  a shell on a pty at /shell (behind that token), the terminal page at /term/, an echo at /echo"
	$(BIN)/twistd --nodaemon --pidfile= wsrouter --listen tcp:$(DEMO_PORT):interface=127.0.0.1 \
		--config examples/demo.toml

# Debian packages for the real-program tests (telnetd, Xvfb, x11vnc); the
# tests that need them skip, saying why, where they cannot be installed.
system-deps: $(SYSTEM_DEPS)

$(SYSTEM_DEPS): tests/setup/system-deps.sh
	bash tests/setup/system-deps.sh .cache
	touch $@

# Rules and mypy settings live in pyproject.toml ([tool.ruff.lint], [tool.mypy]);
# ruff checks every Python file of the project (.venv, build, dist excluded).
lint: install
	$(BIN)/ruff check

# mypy --strict over src/ (the files setting), with the zope.interface plugin.
typecheck: install
	$(BIN)/mypy

test: lint typecheck $(SYSTEM_DEPS) conformance-setup $(FRAMES)
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/run.py
	$(BIN)/python bench/deflate_relay.py

# Thousands of sessions with random sizes, slow readers, aborts and reloads
# for a bounded time; fails on any lost or changed byte, or descriptors and
# child processes not back at their baseline (bench/soak.py, docs/soak.md).
# CI runs a short form.
SOAK_SECONDS ?= 300
SOAK_CONNECTIONS ?= 2000

soak: install
	$(BIN)/python bench/soak.py --seconds $(SOAK_SECONDS) --connections $(SOAK_CONNECTIONS)

# Autobahn|Testsuite needs Python 2.7 (pyenv's, or see docs/conformance.md);
# without one, setup says so and the quick conformance test in `make test` skips.
WSTEST := .cache/autobahn-py27/bin/wstest

conformance-setup:
	bash conformance/setup.sh .cache/autobahn-py27 || echo "conformance: Autobahn|Testsuite not installed; its tests will skip"

# The whole suite (517 cases) against the echo: route, a TCP relay route, the
# framed relay (length:u32:typed through a TCP echo) and Autobahn-Python's own
# echo server (CI leaves the reference out); fails if the echo or the framed
# route has a FAILED case.  The relay's 6.4.1-6.4.4 are a documented
# deviation (docs/conformance.md), so the relay is reported, not required.
CONFORMANCE_AGENTS ?= echo,relay,framed,autobahn
# Extra run.py options; CI leaves out the slowest deflate payload groups.
CONFORMANCE_OPTIONS ?=

conformance: install
	bash conformance/setup.sh .cache/autobahn-py27
	$(BIN)/python conformance/run.py --agents $(CONFORMANCE_AGENTS) --require-clean echo,framed \
		--markdown .cache/conformance/summary.md $(CONFORMANCE_OPTIONS)

# Coverage-guided fuzzing with atheris (docs/fuzzing.md): each fuzz/fuzz_*.py
# target for FUZZ_SECONDS, from its seed corpus; fails on a finding.  FUZZ_SEED
# fixes libFuzzer's seed (CI sets it); runs still differ (docs/fuzzing.md).
FUZZ_SECONDS ?= 60
FUZZ_SEED ?=

fuzz: install
	FUZZ_SEED=$(FUZZ_SEED) $(BIN)/python fuzz/run.py --seconds $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info $(REBIND) $(FRAMES) .cache
