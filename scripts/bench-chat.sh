#!/usr/bin/env bash
# Chat fan-out figures for BENCHMARKS.md: a release server on loopback
# (SQLite), driven by `palaver-loadtest chat`: USERS users in group rooms of
# ROOM_SIZE on the live rooms WebSocket, sending RATE messages per second
# over all users for SEND_SECONDS (half of them announced with `typing`, presence
# churn twice a minute per user). Delivery latency is send → `message.new`
# at every other member of the room.
#
# NODES=2 runs two servers on one database and a throw-away Redis
# (redis-server on loopback, no persistence), the users' sockets spread so
# every room has members on both: deliveries then cross nodes over Redis.
#
# Usage: scripts/bench-chat.sh [users…]
#   users          default: 50 200
#   NODES          1 (default) or 2 (the second on PORT+1, Redis on PORT+2)
#   ROOM_SIZE      users per room (default 10)
#   RATE           messages per second over all users (default 100)
#   SEND_SECONDS   how long users send (default 30)
#   PORT           the server's port on 127.0.0.1 (default 18083)
#   BENCH_JSON_DIR keep the JSON and HTML reports here
#   PALAVER_BIN_DIR use the palaver and palaver-loadtest binaries there
#                  instead of building release ones
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ $# -gt 0 ]; then users_list=("$@"); else users_list=(50 200); fi
room_size="${ROOM_SIZE:-10}"
PORT="${PORT:-18083}"
rate="${RATE:-100}"
# (Not $SECONDS: bash's own counter.)
seconds="${SEND_SECONDS:-30}"
if [ -n "${PALAVER_BIN_DIR:-}" ]; then
  bin="$PALAVER_BIN_DIR"
else
  cargo build --release -p palaver --bin palaver -p palaver-loadtest --bin palaver-loadtest
  bin="${CARGO_TARGET_DIR:-target}/release"
fi
nodes="${NODES:-1}"
case "$nodes" in 1 | 2) ;; *) echo "NODES is 1 or 2, not $nodes" >&2; exit 2 ;; esac
work="$(mktemp -d)"
server_pid=""
second_pid=""
redis_pid=""
cleanup() {
  for pid in "$server_pid" "$second_pid" "$redis_pid"; do
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
export PALAVER_SERVER_BIND="127.0.0.1:${PORT}"
export PALAVER_LIMITS_REQUESTS_PER_SECOND=1000000 PALAVER_LIMITS_BURST=1000000
export PALAVER_LOG_LEVEL=warn
export PALAVER_DATABASE_SQLITE_PATH="$work/palaver.db" PALAVER_AUTH_JWT_SECRET_FILE="$work/jwt.key"
unset DATABASE_URL

org="$("$bin"/palaver admin create-org bench-chat 2>/dev/null)"
key="$("$bin"/palaver admin create-key --org "$org" 2>/dev/null)"
socket_args=()
if [ "$nodes" = 2 ]; then
  redis_port=$((PORT + 2)) second="http://127.0.0.1:$((PORT + 1))"
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$work" >"$work/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 1 50); do [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
  export REDIS_URL="redis://127.0.0.1:$redis_port"
  PALAVER_SERVER_BIND="127.0.0.1:$((PORT + 1))" PALAVER_REDIS_NODE_ID=b \
    "$bin"/palaver serve 2>"$work/server-b.log" &
  second_pid=$!
  for _ in $(seq 1 100); do curl -sf "$second/readyz" | grep -q '"ready"' && break; sleep 0.1; done
  curl -sf "$second/readyz" | grep -q '"ready"' || { tail -n 20 "$work/server-b.log" >&2; exit 1; }
  socket_args=(--socket-url "http://127.0.0.1:${PORT}" --socket-url "$second" --node-pid "$second_pid")
fi
PALAVER_REDIS_NODE_ID=a "$bin"/palaver serve 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:${PORT}/readyz" | grep -q '"ready"' && break; sleep 0.1; done
curl -sf "http://127.0.0.1:${PORT}/readyz" | grep -q '"ready"' || { tail -n 20 "$work/server.log" >&2; exit 1; }
out="${BENCH_JSON_DIR:-$work}"
echo "== chat: $nodes node(s), $(nproc) cores, server workers = cores, SQLite$([ "$nodes" = 2 ] && echo ", Redis $(redis-server --version | cut -d' ' -f3)")"
status=0
for users in "${users_list[@]}"; do
  rooms=$(((users + room_size - 1) / room_size))
  echo "-- $users users in $rooms rooms, $rate messages/s for $seconds s; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  PALAVER_API_KEY="$key" "$bin"/palaver-loadtest chat --url "http://127.0.0.1:${PORT}" \
    --users "$users" --rooms "$rooms" --messages-per-second "$rate" \
    --max-seconds "$seconds" --server-pid "$server_pid" ${socket_args[@]+"${socket_args[@]}"} \
    --json "$out/chat-$nodes-$users.json" --html "$out/chat-$nodes-$users.html" || status=1
  echo "   load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
done
if [ "$status" != 0 ]; then
  echo "-- failures; the server log's tail:" >&2
  tail -n 20 "$work/server.log" >&2
  [ "$nodes" = 2 ] && tail -n 20 "$work/server-b.log" >&2
fi
exit "$status"
