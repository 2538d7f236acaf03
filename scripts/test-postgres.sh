#!/usr/bin/env bash
# Throw-away PostgreSQL cluster for tests.
#
# Usage: scripts/test-postgres.sh start|stop|url
#   start  create (if needed) and start the cluster, wait until it accepts
#          connections, print its URL as the last line of stdout (idempotent)
#   stop   stop it (fast mode) and delete its directory (no error if not running)
#   url    print the URL
#
# Env: PALAVER_TEST_PG_DIR  (default <repo>/.pgtest)   data, log and unix socket live here
#      PALAVER_TEST_PG_PORT (default: a free port below the ephemeral range,
#                            see free-port.sh; kept in <dir>/port)  bound to 127.0.0.1 only
# Auth is "trust", superuser "postgres": never expose this cluster.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

PG_DIR="${PALAVER_TEST_PG_DIR:-$REPO_ROOT/.pgtest}"
case "$PG_DIR" in /*) ;; *) PG_DIR="$PWD/$PG_DIR" ;; esac
while [[ "$PG_DIR" == */ ]]; do PG_DIR="${PG_DIR%/}"; done
if [ -z "$PG_DIR" ]; then echo "test-postgres: ERROR: PALAVER_TEST_PG_DIR must not be /" >&2; exit 1; fi
PG_PORT="${PALAVER_TEST_PG_PORT:-}"
DATA="$PG_DIR/data"
LOG="$PG_DIR/postgres.log"
MARKER="$PG_DIR/.palaver-test-postgres"
url_for() { echo "postgres://postgres@127.0.0.1:$1/postgres"; }
# Ports tried before giving up when the port was picked here (another
# process may take a free port between the pick and the bind).
START_TRIES=4
START_TIMEOUT=30

die() { echo "test-postgres: ERROR: $*" >&2; exit 1; }
say() { echo "test-postgres: $*" >&2; }
usage() { echo "Usage: $0 start|stop|url   (env: PALAVER_TEST_PG_DIR, PALAVER_TEST_PG_PORT)" >&2; }

[ -z "$PG_PORT" ] || [[ "$PG_PORT" =~ ^[0-9]+$ ]] || die "PALAVER_TEST_PG_PORT must be a number, got '$PG_PORT'"

# Highest installed PostgreSQL version; do not rely on PATH.
find_bindir() {
  local d best="" bestv=-1 v
  for d in /usr/lib/postgresql/*/bin; do
    if [ ! -x "$d/initdb" ] || [ ! -x "$d/pg_ctl" ]; then continue; fi
    v="$(basename "$(dirname "$d")")"
    [[ "$v" =~ ^[0-9]+$ ]] || continue
    if [ "$v" -gt "$bestv" ]; then bestv="$v"; best="$d"; fi
  done
  [ -n "$best" ] || die "no PostgreSQL server found under /usr/lib/postgresql/*/bin.
  Install it with: scripts/setup-deps.sh test   (or: apt-get install postgresql)"
  echo "$best"
}

# initdb/postgres refuse to run as root: run them as 'postgres' when we are root.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    (cd "$PG_DIR" && runuser -u postgres -- "$@")
  else
    (cd "$PG_DIR" && "$@")
  fi
}

# True if $1 is a live process. A zombie (dead but not reaped, which happens in
# containers whose PID 1 does not reap) counts as dead, unlike in `pg_ctl status`.
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

is_running() {
  [ -f "$DATA/postmaster.pid" ] || return 1
  pid_alive "$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null)"
}

# After a crash/kill the lock files still name a dead (or zombie) postmaster and
# the new postmaster would refuse to start; only call when not is_running.
remove_stale_locks() {
  if [ -f "$DATA/postmaster.pid" ]; then
    say "removing stale lock files left by a postmaster that is no longer running"
    rm -f "$DATA/postmaster.pid" "$PG_DIR"/.s.PGSQL.*.lock
  fi
}

# Refuse to delete a directory that this script did not create.
safe_rm_dir() {
  [ -e "$PG_DIR" ] || return 0
  case "$PG_DIR" in ""|/|"${HOME:-/}"|"$REPO_ROOT"|/usr*|/etc*|/var|/home|/root) die "refusing to delete '$PG_DIR'";; esac
  if [ ! -e "$MARKER" ] && [ -n "$(ls -A "$PG_DIR" 2>/dev/null)" ]; then
    die "'$PG_DIR' exists but was not created by this script (no $(basename "$MARKER")); not deleting it. Remove it yourself or set PALAVER_TEST_PG_DIR."
  fi
  rm -rf -- "$PG_DIR"
}

log_tail() {
  local f
  for f in "$PG_DIR/initdb.log" "$LOG"; do
    [ -s "$f" ] || continue
    echo "---- last lines of $f ----" >&2
    tail -n 25 "$f" >&2
  done
}

cmd_start() {
  if [ -d "$PG_DIR" ] && is_running; then
    local running_port
    running_port="$(cat "$PG_DIR/port" 2>/dev/null || echo '?')"
    [ -z "$PG_PORT" ] || [ "$running_port" = "$PG_PORT" ] || die "already running in $PG_DIR on port $running_port, not $PG_PORT. Run '$0 stop' first."
    say "already running in $PG_DIR"
    url_for "$running_port"
    return 0
  fi

  # A unix socket path is limited to ~107 bytes.
  local sock="$PG_DIR/.s.PGSQL.65535"
  [ "${#sock}" -lt 100 ] || die "path too long for a unix socket: $sock
  Set PALAVER_TEST_PG_DIR to a shorter directory (e.g. /tmp/palaver-pg)."

  if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    die "running as root but there is no 'postgres' user to run the server as (initdb refuses root).
  Install the postgresql package (scripts/setup-deps.sh test) or run this script as a normal user."
  fi

  if [ -e "$PG_DIR" ] && [ ! -e "$MARKER" ] && [ -n "$(ls -A "$PG_DIR" 2>/dev/null)" ]; then
    die "'$PG_DIR' exists but was not created by this script (no $(basename "$MARKER")); not touching it.
  Remove it yourself or set PALAVER_TEST_PG_DIR to another directory."
  fi
  # A directory from an earlier failed attempt (no complete cluster): start over.
  if [ -d "$PG_DIR" ] && [ ! -f "$DATA/PG_VERSION" ]; then
    [ ! -e "$MARKER" ] || say "removing incomplete $PG_DIR from an earlier attempt"
    safe_rm_dir
  fi

  if [ ! -d "$PG_DIR" ]; then
    mkdir -p "$PG_DIR"
    : >"$MARKER"
    chmod 755 "$PG_DIR"   # data/ itself stays 0700; this lets other users reach the socket
    if [ "$(id -u)" -eq 0 ]; then
      chown postgres: "$PG_DIR" "$MARKER"
      # The postgres user must be able to reach the directory.
      runuser -u postgres -- test -w "$PG_DIR" || die "user 'postgres' cannot write to $PG_DIR
  (a parent directory is probably not searchable by others, e.g. /root). Set PALAVER_TEST_PG_DIR
  to a directory postgres can reach, e.g. PALAVER_TEST_PG_DIR=/tmp/palaver-pg"
    fi
    say "creating cluster in $PG_DIR ($BIN)"
    if ! as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
         >"$PG_DIR/initdb.log" 2>&1; then
      log_tail
      die "initdb failed (full log: $PG_DIR/initdb.log)"
    fi
    echo "include_if_exists = 'palaver.conf'" | as_pg tee -a "$DATA/postgresql.conf" >/dev/null
  fi

  remove_stale_locks
  local port try
  for ((try = 1; try <= START_TRIES; try++)); do
    port="${PG_PORT:-$("$SCRIPT_DIR/free-port.sh")}"
    if start_on "$port"; then
      url_for "$port"
      return 0
    fi
    [ -z "$PG_PORT" ] || break
    say "could not start on port $port; trying another"
  done
  log_tail
  die "PostgreSQL did not start (last port tried: $port; is it in use? try: ss -ltnp | grep $port).
  Full log: $LOG"
}

# Starts the cluster on 127.0.0.1:$1 and waits until it accepts connections.
start_on() {
  local port="$1"
  echo "$port" >"$PG_DIR/port"
  # Rewritten on every start so the port takes effect.
  as_pg tee "$DATA/palaver.conf" >/dev/null <<CONF
# written by scripts/test-postgres.sh
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$PG_DIR'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
CONF

  if ! as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t "$START_TIMEOUT" start >/dev/null 2>&1; then
    return 1
  fi

  # pg_ctl -w already waited; double-check TCP on 127.0.0.1 too.
  local i
  for ((i = 0; i < START_TIMEOUT * 5; i++)); do
    if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres; then
      say "running in $PG_DIR on port $port (log: $LOG)"
      return 0
    fi
    sleep 0.2
  done
  log_tail
  die "PostgreSQL started but does not accept connections on 127.0.0.1:$port after ${START_TIMEOUT}s"
}

cmd_stop() {
  if [ ! -e "$PG_DIR" ]; then
    say "not running (no $PG_DIR)"
    return 0
  fi
  if is_running; then
    as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >/dev/null 2>&1 || {
      log_tail
      die "could not stop PostgreSQL in $DATA (see $LOG); not deleting the directory"
    }
    say "stopped"
  else
    say "not running"
  fi
  safe_rm_dir
  say "removed $PG_DIR"
}

[ $# -eq 1 ] || { usage; exit 2; }
case "$1" in
  start) BIN="$(find_bindir)"; cmd_start ;;
  stop)
    if [ -e "$PG_DIR" ]; then BIN="$(find_bindir)"; fi
    cmd_stop ;;
  url)
    [ -f "$PG_DIR/port" ] || die "not started (no $PG_DIR/port)"
    url_for "$(cat "$PG_DIR/port")" ;;
  -h|--help) usage; exit 0 ;;
  *) usage; exit 2 ;;
esac
