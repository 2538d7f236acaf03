#!/usr/bin/env bash
# Install the Debian/Ubuntu packages Palaver needs, but only the missing ones.
#
# Usage: scripts/setup-deps.sh [run|test]
#   run   what `make run` needs: pkg-config libopus-dev libpq-dev espeak-ng (the local
#         voice's phonemizer and fallback voice, run as a program)
#   test  everything: build tools + postgresql redis-server espeak-ng sox, and for
#         the console's browser test chromium curl (+ nodejs npm when npm is missing)
#
# Idempotent: prints nothing and changes nothing when all packages are present.
# Never starts a service (a temporary policy-rc.d blocks service starts during apt).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
cd "$REPO_ROOT"

die() { echo "setup-deps: ERROR: $*" >&2; exit 1; }

RUN_PKGS=(pkg-config libopus-dev libpq-dev espeak-ng)
BUILD_PKGS=(pkg-config libopus-dev libpq-dev gcc make)
TEST_PKGS=(postgresql redis-server espeak-ng sox chromium firefox-esr curl iproute2)

mode="${1:-test}"
case "$mode" in
  run)  wanted=("${RUN_PKGS[@]}") ;;
  test)
    wanted=("${BUILD_PKGS[@]}" "${TEST_PKGS[@]}")
    # Node.js may come from elsewhere (NodeSource bundles npm): only when
    # there is no npm at all, take Debian's.
    command -v npm >/dev/null 2>&1 || wanted+=(nodejs npm)
    ;;
  -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown mode '$mode'. Usage: $0 [run|test]" ;;
esac
[ $# -le 1 ] || die "too many arguments. Usage: $0 [run|test]"

command -v dpkg-query >/dev/null 2>&1 \
  || die "dpkg-query not found: this script only supports Debian/Ubuntu (apt). Install these yourself: ${wanted[*]}"

missing=()
for pkg in "${wanted[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
  [ "$status" = "install ok installed" ] || missing+=("$pkg")
done

[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    die "missing packages: ${missing[*]}
  You are not root and sudo is not available. Ask an admin to run:
    apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
  fi
fi
command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these yourself: ${missing[*]}"

echo "setup-deps: installing ${missing[*]}" >&2

# Keep package postinst scripts from starting services (postgresql, redis-server).
POLICY=/usr/sbin/policy-rc.d
created_policy=0
cleanup() {
  if [ "$created_policy" = 1 ]; then "${SUDO[@]}" rm -f "$POLICY" || true; fi
  [ -z "${aptlog:-}" ] || rm -f "$aptlog"
}
trap cleanup EXIT
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\n# temporary, created by palaver scripts/setup-deps.sh\nexit 101\n' \
    | "${SUDO[@]}" tee "$POLICY" >/dev/null
  "${SUDO[@]}" chmod 755 "$POLICY"
  created_policy=1
fi

aptlog="$(mktemp)"
apt() {
  if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@" >>"$aptlog" 2>&1; then
    echo "setup-deps: ERROR: 'apt-get $*' failed; last lines of its output:" >&2
    tail -n 30 "$aptlog" >&2
    exit 1
  fi
}
apt update
apt install -y --no-install-recommends "${missing[@]}"
