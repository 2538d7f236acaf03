#!/usr/bin/env bash
# Prints a TCP port that nothing on 127.0.0.1 listens on, chosen at random
# *below* the kernel's ephemeral range (net.ipv4.ip_local_port_range), so an
# outgoing connection cannot be holding it as its local port when a test
# server binds it a moment later (a fixed port inside that range once failed
# a whole `make test` run). Used by test-postgres.sh and test-redis.sh.
set -euo pipefail

low=32768
if read -r first _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null; then
  low="$first"
fi
top=$((low - 1))
bottom=10000
[ "$top" -gt $((bottom + 1000)) ] || bottom=1024
[ "$top" -gt "$bottom" ] || { echo "free-port: the ephemeral range starts at $low: no room below it" >&2; exit 1; }

listening() {
  # ss is in iproute2; without it, try to connect.
  if command -v ss >/dev/null 2>&1; then
    [ -n "$(ss -Htan "( sport = :$1 )" 2>/dev/null)" ]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

for _ in $(seq 1 100); do
  port=$((bottom + (RANDOM * 32768 + RANDOM) % (top - bottom + 1)))
  if ! listening "$port"; then
    echo "$port"
    exit 0
  fi
done
echo "free-port: no free port found between $bottom and $top after 100 tries" >&2
exit 1
