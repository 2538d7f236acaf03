#!/usr/bin/env bash
# Contract test (issue 13): schemathesis (pinned, in a virtual environment
# made here) runs every operation of /v1/openapi.json against a throw-away
# server with all its checks (scripts/schemathesis.toml says which two
# operations skip one check, and why) and exits non-zero on any failure.
# `make test` runs it (scripts/run-tests.sh).
#
# Usage: scripts/contract-test.sh [examples per operation]   (default 30)
#   PALAVER_BIN_DIR  use the palaver binary there instead of target/debug
#   SEED             schemathesis seed (default 1, so runs compare)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SCHEMATHESIS_VERSION=4.32.5
examples="${1:-30}"
venv=".venv-schemathesis"
if [ ! -x "$venv/bin/schemathesis" ] || ! "$venv/bin/schemathesis" --version | grep -q "$SCHEMATHESIS_VERSION"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi
if [ -z "${PALAVER_BIN_DIR:-}" ]; then
  cargo build --quiet -p palaver --bin palaver
  PALAVER_BIN_DIR=target/debug
fi
bin="$PALAVER_BIN_DIR/palaver"

work="$(mktemp -d)"
port="$(scripts/free-port.sh)"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export PALAVER_DATABASE_SQLITE_PATH="$work/palaver.db"
export PALAVER_AUTH_JWT_SECRET="contract-test-secret-0123456789abcdef"
"$bin" migrate >/dev/null
org="$("$bin" admin create-org "Contract test")"
key="$("$bin" admin create-key --org "$org" 2>/dev/null)"
# Rate limits out of the way: the checks, not the limiter, are under test.
PALAVER_SERVER_BIND="127.0.0.1:$port" PALAVER_LIMITS_REQUESTS_PER_SECOND=1000000 \
  PALAVER_LIMITS_BURST=1000000 PALAVER_PROVIDERS_PRELOAD_LOCAL=false \
  "$bin" serve >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
# The hooks teach it application/sdp (scripts/contract_hooks.py).
PYTHONPATH=scripts SCHEMATHESIS_HOOKS=contract_hooks "$venv/bin/schemathesis" \
  --config-file scripts/schemathesis.toml run "http://127.0.0.1:$port/v1/openapi.json" \
  --url "http://127.0.0.1:$port" -H "Authorization: Bearer $key" \
  --max-examples "$examples" --seed "${SEED:-1}" --no-color
