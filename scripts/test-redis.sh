#!/usr/bin/env bash
# Throw-away Redis server for tests (no persistence).
#
# Usage: scripts/test-redis.sh start|stop|url
#   start  start redis-server (daemonized), wait until it answers PING, print its
#          URL as the last line of stdout (idempotent)
#   stop   shut it down and delete its directory (no error if not running)
#   url    print the URL
#
# Env: PALAVER_TEST_REDIS_DIR  (default <repo>/.redistest)  pidfile and log live here
#      PALAVER_TEST_REDIS_PORT (default: a free port below the ephemeral
#                               range, see free-port.sh; kept in <dir>/port)  bound to 127.0.0.1 only
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

R_DIR="${PALAVER_TEST_REDIS_DIR:-$REPO_ROOT/.redistest}"
case "$R_DIR" in /*) ;; *) R_DIR="$PWD/$R_DIR" ;; esac
while [[ "$R_DIR" == */ ]]; do R_DIR="${R_DIR%/}"; done
if [ -z "$R_DIR" ]; then echo "test-redis: ERROR: PALAVER_TEST_REDIS_DIR must not be /" >&2; exit 1; fi
R_PORT="${PALAVER_TEST_REDIS_PORT:-}"
PIDFILE="$R_DIR/redis.pid"
PORTFILE="$R_DIR/port"
LOG="$R_DIR/redis.log"
MARKER="$R_DIR/.palaver-test-redis"
url_for() { echo "redis://127.0.0.1:$1"; }
# Ports tried before giving up when the port was picked here.
START_TRIES=4
START_TIMEOUT=30

die() { echo "test-redis: ERROR: $*" >&2; exit 1; }
say() { echo "test-redis: $*" >&2; }
usage() { echo "Usage: $0 start|stop|url   (env: PALAVER_TEST_REDIS_DIR, PALAVER_TEST_REDIS_PORT)" >&2; }

[ -z "$R_PORT" ] || [[ "$R_PORT" =~ ^[0-9]+$ ]] || die "PALAVER_TEST_REDIS_PORT must be a number, got '$R_PORT'"

need_bins() {
  local b
  for b in redis-server redis-cli; do
    command -v "$b" >/dev/null 2>&1 || die "'$b' not found. Install it with: scripts/setup-deps.sh test   (or: apt-get install redis-server)"
  done
}

# True if $1 is a live process. A zombie (dead but not reaped, which happens in
# containers whose PID 1 does not reap) counts as dead.
pid_alive() {
  local pid="$1" state
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  if [ -r "/proc/$pid/stat" ]; then
    state="$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
  else
    [ ! -d /proc/self ] && kill -0 "$pid" 2>/dev/null
  fi
}

server_pid() { head -n 1 "$PIDFILE" 2>/dev/null || true; }
is_running() { [ -f "$PIDFILE" ] && pid_alive "$(server_pid)"; }
# `timeout` so that something else squatting on the port cannot hang us.
ping_ok() { [ "$(timeout 2 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]; }

# Refuse to delete a directory that this script did not create.
safe_rm_dir() {
  [ -e "$R_DIR" ] || return 0
  case "$R_DIR" in ""|/|"${HOME:-/}"|"$REPO_ROOT"|/usr*|/etc*|/var|/home|/root) die "refusing to delete '$R_DIR'";; esac
  if [ ! -e "$MARKER" ] && [ -n "$(ls -A "$R_DIR" 2>/dev/null)" ]; then
    die "'$R_DIR' exists but was not created by this script (no $(basename "$MARKER")); not deleting it. Remove it yourself or set PALAVER_TEST_REDIS_DIR."
  fi
  rm -rf -- "$R_DIR"
}

log_tail() {
  [ -s "$LOG" ] || return 0
  echo "---- last lines of $LOG ----" >&2
  tail -n 20 "$LOG" >&2
}

cmd_start() {
  if [ -e "$R_DIR" ] && [ ! -e "$MARKER" ] && [ -n "$(ls -A "$R_DIR" 2>/dev/null)" ]; then
    die "'$R_DIR' exists but was not created by this script (no $(basename "$MARKER")); not touching it.
  Remove it yourself or set PALAVER_TEST_REDIS_DIR to another directory."
  fi
  if is_running; then
    local running_port
    running_port="$(cat "$PORTFILE" 2>/dev/null || echo '?')"
    [ -z "$R_PORT" ] || [ "$running_port" = "$R_PORT" ] || die "already running in $R_DIR on port $running_port, not $R_PORT. Run '$0 stop' first."
    say "already running in $R_DIR"
    url_for "$running_port"
    return 0
  fi

  mkdir -p "$R_DIR"
  : >"$MARKER"
  local port try
  for ((try = 1; try <= START_TRIES; try++)); do
    port="${R_PORT:-$("$SCRIPT_DIR/free-port.sh")}"
    if start_on "$port"; then
      url_for "$port"
      return 0
    fi
    [ -z "$R_PORT" ] || break
    say "could not start on port $port; trying another"
  done
  log_tail
  die "redis-server did not start (last port tried: $port; is it in use? try: ss -ltnp | grep $port). Log: $LOG"
}

# Starts redis-server on 127.0.0.1:$1 and waits until it answers PING.
start_on() {
  local port="$1"
  rm -f "$PIDFILE"
  echo "$port" >"$PORTFILE"
  : >"$LOG"
  redis-server --port "$port" --bind 127.0.0.1 \
    --daemonize yes --pidfile "$PIDFILE" --logfile "$LOG" --dir "$R_DIR" \
    --save '' --appendonly no \
    || return 1

  local i
  for ((i = 0; i < START_TIMEOUT * 10; i++)); do
    # Give it a moment to write its pidfile, then fail fast if it died.
    if [ "$i" -ge 5 ] && ! is_running; then
      return 1
    fi
    if is_running && ping_ok "$port"; then
      say "running in $R_DIR on port $port (log: $LOG)"
      return 0
    fi
    sleep 0.1
  done
  log_tail
  die "redis-server did not answer PING on 127.0.0.1:$port within ${START_TIMEOUT}s. Log: $LOG"
}

cmd_stop() {
  if [ ! -e "$R_DIR" ]; then
    say "not running (no $R_DIR)"
    return 0
  fi
  if is_running; then
    local pid port i
    pid="$(server_pid)"
    port="$(cat "$PORTFILE" 2>/dev/null || echo "${R_PORT:-6379}")"
    timeout 5 redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      pid_alive "$pid" || break
      sleep 0.1
    done
    if pid_alive "$pid"; then
      say "redis-server (pid $pid) did not exit after 10s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
      ! pid_alive "$pid" || die "could not stop redis-server (pid $pid); not deleting $R_DIR"
    fi
    say "stopped"
  else
    say "not running"
  fi
  safe_rm_dir
  say "removed $R_DIR"
}

[ $# -eq 1 ] || { usage; exit 2; }
case "$1" in
  start) need_bins; cmd_start ;;
  stop) cmd_stop ;;
  url)
    [ -f "$PORTFILE" ] || die "not started (no $PORTFILE)"
    url_for "$(cat "$PORTFILE")" ;;
  -h|--help) usage; exit 0 ;;
  *) usage; exit 2 ;;
esac
