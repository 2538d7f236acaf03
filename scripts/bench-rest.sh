#!/usr/bin/env bash
# REST control-plane figures for BENCHMARKS.md: a release server on loopback
# (SQLite, or Postgres with `postgres`), driven by palaver-loadtest.
# Usage: scripts/bench-rest.sh [sqlite|postgres]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
backend="${1:-sqlite}"
cargo build --release --bin palaver --bin palaver-loadtest >/dev/null 2>&1 \
  || cargo build --release -p palaver --bin palaver -p palaver-loadtest --bin palaver-loadtest
work="$(mktemp -d)"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  [ "$backend" = postgres ] && scripts/test-postgres.sh stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
export PALAVER_SERVER_BIND=127.0.0.1:18080
export PALAVER_LIMITS_REQUESTS_PER_SECOND=1000000 PALAVER_LIMITS_BURST=1000000
export PALAVER_LIMITS_MAX_OPEN_SESSIONS_PER_ORG=1000000
export PALAVER_DATABASE_SQLITE_PATH="$work/palaver.db" PALAVER_AUTH_JWT_SECRET_FILE="$work/jwt.key"
unset DATABASE_URL
if [ "$backend" = postgres ]; then
  export DATABASE_URL="$(scripts/test-postgres.sh start | tail -n 1)"
  psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS palaver_bench" -c "CREATE DATABASE palaver_bench"
  DATABASE_URL="${DATABASE_URL%/*}/palaver_bench"
fi
bin=target/release
org="$($bin/palaver admin create-org bench 2>/dev/null)"
key="$($bin/palaver admin create-key --org "$org" 2>/dev/null)"
$bin/palaver serve 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 1 50); do curl -sf http://127.0.0.1:18080/healthz >/dev/null && break; sleep 0.1; done
echo "== $backend, $(nproc) cores, server workers = cores"
PALAVER_API_KEY="$key" $bin/palaver-loadtest rest --url http://127.0.0.1:18080 \
  --scenario sessions --iterations 4000 --clients 16
PALAVER_API_KEY="$key" $bin/palaver-loadtest rest --url http://127.0.0.1:18080 \
  --scenario list-assistants --iterations 20000 --clients 32
rss_kb="$(awk '/VmHWM/ {print $2}' /proc/$server_pid/status)"
echo "server peak RSS: $((rss_kb / 1024)) MiB"
