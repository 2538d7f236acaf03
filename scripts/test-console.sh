#!/usr/bin/env bash
# The browser test of the console (/console): Debian's Chromium, driven by
# playwright-core, talks to a real Palaver server over WebRTC with a WAV of
# real speech as its microphone; then Debian's Firefox ESR, driven over
# WebDriver BiDi by puppeteer-core, runs a typed turn with its fake
# microphone. The server's OpenAI-compatible providers are palaver-loadtest's
# fakes. Everything it starts stops when it exits.
#
# Usage: scripts/test-console.sh
#   Needs: chromium, firefox-esr, espeak-ng, sox (scripts/setup-deps.sh test),
#   node + npm.
#   PALAVER_BIN_DIR   use the binaries there instead of building target/debug
#   CONSOLE_ARTIFACTS screenshots and logs (default target/console-artifacts)
#   CONSOLE_FROM_DISK=1 serve console/ from disk instead of the embedded copy
#                     (while editing it: no rebuild needed)
#   CONSOLE_BROWSERS  which browsers run (default "chromium firefox")
#   CONSOLE_RTC_BIND  the server's WebRTC socket (default: 127.0.0.1:0, or
#                     with Firefox 10.199.0.1:0 inside a private network
#                     namespace the script makes; setting it skips that)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$(pwd)"

die() { echo "test-console: ERROR: $*" >&2; exit 1; }
for tool in node npm espeak-ng sox; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (scripts/setup-deps.sh test installs it)"
done
browsers="${CONSOLE_BROWSERS:-chromium firefox}"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
FIREFOX="${FIREFOX:-/usr/bin/firefox-esr}"
case " $browsers " in *" chromium "*)
  [ -x "$CHROMIUM" ] || die "$CHROMIUM is missing (apt-get install chromium; scripts/setup-deps.sh test does)" ;;
esac
case " $browsers " in *" firefox "*)
  [ -x "$FIREFOX" ] || die "$FIREFOX is missing (apt-get install firefox-esr; scripts/setup-deps.sh test does)" ;;
esac

if [ -z "${PALAVER_BIN_DIR:-}" ]; then
  cargo build --quiet -p palaver --bin palaver -p palaver-loadtest --bin palaver-loadtest
  PALAVER_BIN_DIR="${CARGO_TARGET_DIR:-target}/debug"
fi
bin="$PALAVER_BIN_DIR"
artifacts="${CONSOLE_ARTIFACTS:-$root/target/console-artifacts}"
rm -rf "$artifacts"
mkdir -p "$artifacts"

# playwright-core and puppeteer-core, pinned by the committed lock file (no
# browser download: the tests launch Debian's Chromium and Firefox ESR).
# (Not again inside the network namespace below: it has no route out.)
if [ -z "${PALAVER_CONSOLE_NETNS:-}" ]; then
  (cd console/tests && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

# Firefox gathers no loopback ICE candidates and never connects to a
# 127.0.0.1 one (media.peerconnection.ice.loopback does not change that in
# 153 ESR), so a run with Firefox happens in a private network namespace of
# its own: loopback plus a veth pair whose address, 10.199.0.1, exists only
# inside it. The server's media socket binds that address, the HTTP API
# stays on 127.0.0.1, and no packet leaves the namespace. (Root, or a kernel
# that allows unprivileged user namespaces, is needed; CONSOLE_RTC_BIND
# skips the namespace, CONSOLE_BROWSERS=chromium does not need it.)
netns_address=10.199.0.1
if [[ " $browsers " == *" firefox "* ]] && [ -z "${CONSOLE_RTC_BIND:-}" ] && [ -z "${PALAVER_CONSOLE_NETNS:-}" ]; then
  command -v unshare >/dev/null 2>&1 || die "unshare (util-linux) is missing: Firefox's run needs a network namespace"
  command -v ip >/dev/null 2>&1 || die "ip (iproute2) is missing: Firefox's run needs a network namespace"
  unshare_args=(--net)
  [ "$(id -u)" -eq 0 ] || unshare_args+=(--map-root-user)
  exec env PALAVER_CONSOLE_NETNS=1 PALAVER_BIN_DIR="$bin" CONSOLE_ARTIFACTS="$artifacts" \
    unshare "${unshare_args[@]}" "$0" "$@"
fi
if [ -n "${PALAVER_CONSOLE_NETNS:-}" ]; then
  ip link set lo up
  ip link add pv0 type veth peer name pv1
  ip addr add "$netns_address/24" dev pv0
  ip link set pv0 up
  ip link set pv1 up
  # A default route into the pair, so browsers see a network "up" (Firefox
  # goes offline without one); what it routes ends at pv1, inside.
  ip route add default dev pv0
fi

work="$(mktemp -d)"
server_pid=""
fake_pid=""
cleanup() {
  for pid in $server_pid $fake_pid; do
    kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
  cp "$work"/*.log "$artifacts"/ 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A free loopback TCP port (bound and released at once).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# The microphone: 3 s of silence (the call connects meanwhile), the phrase,
# then silence long enough that the loop does not speak again during the test.
espeak-ng -v en-us -s 160 -w "$work/phrase.wav" "Do you have a room for tonight?"
sox "$work/phrase.wav" -r 48000 -c 1 -b 16 "$work/speech.wav" pad 3 40

"$bin"/palaver-loadtest fake-providers --bind 127.0.0.1:0 >"$work/fake.url" 2>"$work/fake.log" &
fake_pid=$!
fake_url=""
for _ in $(seq 1 100); do
  fake_url="$(head -n 1 "$work/fake.url" 2>/dev/null || true)"
  [ -n "$fake_url" ] && break
  sleep 0.1
done
[ -n "$fake_url" ] || { cat "$work/fake.log" >&2; die "the fake providers did not start"; }

# The server's one WebRTC candidate: loopback, or the namespace's address.
rtc_bind="${CONSOLE_RTC_BIND:-}"
if [ -z "$rtc_bind" ]; then
  rtc_bind=127.0.0.1:0
  [ -n "${PALAVER_CONSOLE_NETNS:-}" ] && rtc_bind="$netns_address:0"
fi

port="$(free_port)"
unset DATABASE_URL REDIS_URL
export PALAVER_SERVER_BIND="127.0.0.1:$port"
export PALAVER_DATABASE_SQLITE_PATH="$work/palaver.db" PALAVER_AUTH_JWT_SECRET_FILE="$work/jwt.key"
export PALAVER_PROVIDERS_OPENAI_BASE_URL="$fake_url" OPENAI_API_KEY=sk-fake
export PALAVER_RTC_BIND="$rtc_bind" PALAVER_LOG_LEVEL="${PALAVER_LOG_LEVEL:-info}"
org="$("$bin"/palaver admin create-org "Console test" 2>>"$work/server.log")"
key="$("$bin"/palaver admin create-key --org "$org" 2>>"$work/server.log")"
user_email=console@example.com
user_password="console-test-$RANDOM-$RANDOM"
printf '%s\n' "$user_password" | "$bin"/palaver admin create-user --org "$org" --email "$user_email" \
  --role manager >/dev/null 2>>"$work/server.log"
"$bin"/palaver serve >>"$work/server.log" 2>&1 &
server_pid=$!
url="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
  curl -sf "$url/healthz" >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; die "the server exited"; }
  sleep 0.1
done
curl -sf "$url/healthz" >/dev/null || die "the server did not answer on $url"

export PALAVER_URL="$url" PALAVER_KEY="$key" CONSOLE_ARTIFACTS="$artifacts"
case " $browsers " in *" chromium "*)
  echo "== console in Chromium ($("$CHROMIUM" --version 2>/dev/null || echo chromium)) against $url"
  start=$SECONDS
  PALAVER_USER_EMAIL="$user_email" PALAVER_USER_PASSWORD="$user_password" \
    SPEECH_WAV="$work/speech.wav" CHROMIUM="$CHROMIUM" \
    node --test --test-reporter=spec console/tests/console.test.mjs
  echo "== console in Chromium took $((SECONDS - start)) s; screenshots in $artifacts" ;;
esac
case " $browsers " in *" firefox "*)
  echo "== console in Firefox ($("$FIREFOX" --version 2>/dev/null || echo firefox-esr)) against $url"
  start=$SECONDS
  FIREFOX="$FIREFOX" node --test --test-reporter=spec console/tests/console.firefox.test.mjs
  echo "== console in Firefox took $((SECONDS - start)) s; screenshots in $artifacts" ;;
esac
