#!/usr/bin/env bash
# Voice-session figures for BENCHMARKS.md: a release server on loopback
# (SQLite) whose OpenAI-compatible providers are palaver-loadtest's fakes,
# driven by `palaver-loadtest voice-ws` or `voice-rtc` (spoken turns: the
# callers' microphones play an utterance as real-time paced audio and the
# server's VAD ends each turn; 30 % of callers cut in by speaking). Two
# provider settings: zero latency (the server alone), then a realistic one
# (STT 100 ms, LLM first token 300 ms, TTS first byte 150 ms).
#
# Usage: [TRANSPORT=ws|webrtc] [INPUT=spoken|typed] scripts/bench-voice.sh [callers…]
#   callers        default: 10 50 100
#   TRANSPORT      ws (default): voice-ws; webrtc: voice-rtc (webrtc-rs callers)
#   INPUT          spoken (default) or typed turns
#   UTTERANCE      a WAV for spoken callers (default: 1.2 s of a synthetic
#                  voiced signal)
#   TURNS          turns per caller (default 3)
#   RAMP           callers started per second (default 20; a caller lasts
#                  ~15 s, so above ~300 callers raise it to have them all
#                  connected at once)
#   PHASES         which provider settings: "zero-latency realistic" (default)
#   MAX_SECONDS    no caller or turn starts after this (default 120)
#   FIRST_MESSAGE  the created assistant greets with this: callers hear it
#                  out first, and `setup` (offer or upgrade → its first
#                  audio) is timed (default: no greeting)
#   LOADTEST_ARGS  more palaver-loadtest arguments (e.g. "--decode-audio"
#                  for voice-rtc)
#   BENCH_JSON_DIR keep the JSON and HTML reports and /metrics here
#   PALAVER_BIN_DIR use the palaver and palaver-loadtest binaries there
#                  instead of building release ones
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ $# -gt 0 ]; then callers_list=("$@"); else callers_list=(10 50 100); fi
turns="${TURNS:-3}"
ramp="${RAMP:-20}"
max_seconds="${MAX_SECONDS:-120}"
transport="${TRANSPORT:-ws}"
input="${INPUT:-spoken}"
case "$input" in
  spoken | typed) ;;
  *) echo "INPUT is spoken or typed, not $input" >&2; exit 2 ;;
esac
utterance_args=()
[ -n "${UTTERANCE:-}" ] && utterance_args=(--utterance "$UTTERANCE")
greeting_args=()
[ -n "${FIRST_MESSAGE:-}" ] && greeting_args=(--first-message "$FIRST_MESSAGE")
case "$transport" in
  ws | websocket) transport=ws scenario=voice-ws ;;
  webrtc | rtc) transport=webrtc scenario=voice-rtc ;;
  *) echo "TRANSPORT is ws or webrtc, not $transport" >&2; exit 2 ;;
esac
read -r -a phases <<<"${PHASES:-zero-latency realistic}"
read -r -a extra_args <<<"${LOADTEST_ARGS:-}"
if [ -n "${PALAVER_BIN_DIR:-}" ]; then
  bin="$PALAVER_BIN_DIR"
else
  cargo build --release -p palaver --bin palaver -p palaver-loadtest --bin palaver-loadtest
  bin="${CARGO_TARGET_DIR:-target}/release"
fi
work="$(mktemp -d)"
server_pid=""
fake_pid=""
stop() {
  [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  [ -n "$fake_pid" ] && kill -TERM "$fake_pid" 2>/dev/null && wait "$fake_pid" 2>/dev/null || true
  server_pid="" fake_pid=""
}
cleanup() {
  stop
  rm -rf "$work"
}
trap cleanup EXIT
export PALAVER_SERVER_BIND=127.0.0.1:18081
export PALAVER_LIMITS_REQUESTS_PER_SECOND=1000000 PALAVER_LIMITS_BURST=1000000
export PALAVER_LIMITS_MAX_OPEN_SESSIONS_PER_ORG=1000000
export PALAVER_LOG_LEVEL=warn
unset DATABASE_URL

# One provider setting: fresh fakes, a fresh server, one run per caller count.
phase() {
  local stt_ms="$1" llm_ms="$2" tts_ms="$3" name="$4"
  rm -f "$work"/palaver.db* "$work"/jwt.key
  export PALAVER_DATABASE_SQLITE_PATH="$work/palaver.db" PALAVER_AUTH_JWT_SECRET_FILE="$work/jwt.key"
  "$bin"/palaver-loadtest fake-providers --bind 127.0.0.1:0 \
    --stt-delay-ms "$stt_ms" --llm-delay-ms "$llm_ms" --tts-delay-ms "$tts_ms" \
    >"$work/$name.url" 2>"$work/fake.log" &
  fake_pid=$!
  local fake_url=""
  for _ in $(seq 1 50); do
    fake_url="$(head -n 1 "$work/$name.url" 2>/dev/null || true)"
    [ -n "$fake_url" ] && break
    sleep 0.1
  done
  [ -n "$fake_url" ] || { cat "$work/fake.log" >&2; exit 1; }
  export PALAVER_PROVIDERS_OPENAI_BASE_URL="$fake_url" OPENAI_API_KEY=sk-fake
  local org key
  org="$("$bin"/palaver admin create-org bench 2>/dev/null)"
  key="$("$bin"/palaver admin create-key --org "$org" 2>/dev/null)"
  "$bin"/palaver serve 2>"$work/server.log" &
  server_pid=$!
  for _ in $(seq 1 50); do curl -sf http://127.0.0.1:18081/healthz >/dev/null && break; sleep 0.1; done
  echo "== $name over $transport, $input turns: fake STT ${stt_ms} ms, LLM first byte ${llm_ms} ms, TTS first byte ${tts_ms} ms; $(nproc) cores, server workers = cores"
  [ "$transport" = webrtc ] && echo "   server Opus: complexity ${PALAVER_RTC_OPUS_COMPLEXITY:-default (5)}, ${PALAVER_RTC_OPUS_BITRATE_BPS:-default (32000)} bit/s"
  local status=0 out="${BENCH_JSON_DIR:-$work}" prefix=voice
  [ "$transport" = webrtc ] && prefix=voice-rtc
  [ "$input" = typed ] && prefix="$prefix-typed"
  for callers in "${callers_list[@]}"; do
    echo "-- $callers callers × $turns $input turns, 30 % barge-in, ramp $ramp/s; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    # Without --assistant-id, the scenario creates one (openai STT, LLM and
    # TTS; the server's default end_of_turn_ms 500 and min_interruption_ms
    # 300; a first message when FIRST_MESSAGE is set).
    PALAVER_API_KEY="$key" "$bin"/palaver-loadtest "$scenario" --url http://127.0.0.1:18081 \
      --input "$input" ${utterance_args[@]+"${utterance_args[@]}"} \
      ${greeting_args[@]+"${greeting_args[@]}"} \
      --callers "$callers" --turns "$turns" --barge-in-share 0.3 \
      --ramp-per-second "$ramp" --max-seconds "$max_seconds" --server-pid "$server_pid" \
      --providers-url "$fake_url" --json "$out/$prefix-$name-$callers.json" \
      --html "$out/$prefix-$name-$callers.html" \
      ${extra_args[@]+"${extra_args[@]}"} || status=1
    echo "   load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
  done
  # The server's own counters over the phase (WebRTC socket, sessions).
  curl -sf --max-time 10 http://127.0.0.1:18081/metrics >"$out/$prefix-$name-metrics.txt" || true
  grep -E '^palaver_(rtc_[a-z_]+|sessions_[a-z]+)(\{[^}]*\})? ' "$out/$prefix-$name-metrics.txt" || true
  if [ "$status" != 0 ]; then
    echo "-- failures; the server log's tail:" >&2
    tail -n 20 "$work/server.log" >&2
  fi
  stop
  return "$status"
}

overall=0
for p in "${phases[@]}"; do
  case "$p" in
    zero-latency) phase 0 0 0 zero-latency || overall=1 ;;
    realistic) phase 100 300 150 realistic || overall=1 ;;
    *) echo "unknown phase $p (zero-latency, realistic)" >&2; overall=1 ;;
  esac
done
exit "$overall"
