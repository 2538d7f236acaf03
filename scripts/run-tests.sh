#!/usr/bin/env bash
# The whole suite, twice: on SQLite (the default), then on a throw-away
# Postgres. A throw-away Redis is up for both. Both servers are stopped on
# exit, whatever happens. Between them, the contract test of the OpenAPI
# document (scripts/contract-test.sh). Then the console's browser test
# (Chromium, real WebRTC); PALAVER_SKIP_CONSOLE_TEST=1 skips it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cleanup() {
  scripts/test-postgres.sh stop || true
  scripts/test-redis.sh stop || true
}
trap cleanup EXIT

PG_URL="$(scripts/test-postgres.sh start | tail -n 1)"
REDIS_URL_TEST="$(scripts/test-redis.sh start | tail -n 1)"
export PALAVER_TEST_REDIS_URL="$REDIS_URL_TEST"

echo "== test suite on SQLite"
cargo test --workspace --all-targets

# The OpenAPI document against the server it describes (schemathesis, all
# checks, 30 examples an operation; the binary the suite just built).
echo "== contract test (schemathesis over /v1/openapi.json)"
PALAVER_BIN_DIR=target/debug scripts/contract-test.sh

# The whole workspace again: `-p palaver` alone would resolve features
# differently and rebuild half the dependencies (minutes), more than the
# other crates' tests cost. The local engines' own tests use no database:
# they ran once above.
echo "== test suite on Postgres ($PG_URL)"
PALAVER_TEST_DATABASE_URL="$PG_URL" cargo test --workspace --all-targets --exclude palaver-local

if [ "${PALAVER_SKIP_CONSOLE_TEST:-0}" = 1 ]; then
  echo "== console browser test skipped (PALAVER_SKIP_CONSOLE_TEST=1)"
else
  echo "== console browser test (Chromium, WebRTC, fake providers)"
  scripts/test-console.sh
fi
