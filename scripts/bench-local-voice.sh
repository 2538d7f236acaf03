#!/usr/bin/env bash
# Voice-to-voice on the fully local stack (Whisper tiny.en, SmolLM2-135M,
# Piper), for BENCHMARKS.md: a release server on loopback (SQLite, nothing
# configured, models from models/) whose assistant names no provider, so
# every port is `local`; `palaver-loadtest voice-ws` (or voice-rtc) plays
# one short spoken question as real-time paced 20 ms frames, then silence,
# and waits for the whole reply. Each run is a fresh session with one turn
# (a short turn on an empty conversation), one caller at a time.
#
# Figures: the server's own stages per turn (`turn.metrics`, stored with
# each reply: end of speech → transcript → first token → first audio →
# voice-to-voice, the first reply frame sent), and the caller's
# voice-to-voice (last frame of the question sent → first reply frame
# received), as p50 / p95 (nearest rank) over the runs.
#
# Usage: scripts/bench-local-voice.sh [runs]     (default 10)
#   TRANSPORT          ws (default) or webrtc
#   QUESTION           what espeak-ng says (default: a short question)
#   UTTERANCE          a WAV to say instead (any rate)
#   PALAVER_BIN_DIR    palaver and palaver-loadtest binaries (default
#                      target/release; built when missing)
#   CANDLE_NUM_THREADS the language model's threads (passed through)
#   BENCH_JSON_DIR     keep the loadtest reports, the per-turn figures and
#                      the server log here
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs="${1:-10}"
transport="${TRANSPORT:-ws}"
case "$transport" in
  ws | websocket) scenario=voice-ws ;;
  webrtc | rtc) scenario=voice-rtc ;;
  *) echo "TRANSPORT is ws or webrtc, not $transport" >&2; exit 2 ;;
esac
bin="${PALAVER_BIN_DIR:-target/release}"
if [ ! -x "$bin/palaver" ] || [ ! -x "$bin/palaver-loadtest" ]; then
  cargo build --release -p palaver --bin palaver -p palaver-loadtest --bin palaver-loadtest
  bin="${CARGO_TARGET_DIR:-target}/release"
fi
for tool in curl jq espeak-ng; do
  command -v "$tool" >/dev/null || { echo "needs $tool (scripts/setup-deps.sh)" >&2; exit 2; }
done
work="$(mktemp -d)"
out="${BENCH_JSON_DIR:-$work}"
mkdir -p "$out"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

base=http://127.0.0.1:18082
export PALAVER_SERVER_BIND=127.0.0.1:18082
export PALAVER_LOG_LEVEL="${PALAVER_LOG_LEVEL:-warn}"
export PALAVER_MODELS_DIR="${PALAVER_MODELS_DIR:-$PWD/models}"
export PALAVER_DATABASE_SQLITE_PATH="$work/palaver.db" PALAVER_AUTH_JWT_SECRET_FILE="$work/jwt.key"
unset DATABASE_URL OPENAI_API_KEY DEEPGRAM_API_KEY ELEVENLABS_API_KEY

utterance="${UTTERANCE:-}"
if [ -z "$utterance" ]; then
  utterance="$work/question.wav"
  espeak-ng -v en-us -s 160 -w "$utterance" "${QUESTION:-What is the capital of France?}"
fi

org="$("$bin"/palaver admin create-org local-bench 2>/dev/null)"
key="$("$bin"/palaver admin create-key --org "$org" 2>/dev/null)"
"$bin"/palaver serve 2>"$out/server.log" &
server_pid=$!
# The engines load in the background at start; wait for all three.
ready=""
for _ in $(seq 1 600); do
  ready="$(curl -s --max-time 2 "$base/readyz" | jq -c '.local' 2>/dev/null || true)"
  if [ -n "$ready" ] && [ "$ready" != null ] &&
    jq -e '[.stt, .llm, .tts] | all(startswith("ready"))' <<<"$ready" >/dev/null; then
    break
  fi
  sleep 0.2
done
echo "local engines: $ready"
jq -e '[.stt, .llm, .tts] | all(startswith("ready"))' <<<"$ready" >/dev/null || {
  echo "the local engines are not ready (scripts/fetch-models.sh?)" >&2
  tail -n 20 "$out/server.log" >&2
  exit 1
}
assistant="$(curl -sf "$base/v1/assistants" -H "Authorization: Bearer $key" \
  -H 'content-type: application/json' -d '{"name": "local bench"}' | jq -r '.id')"

echo "== $runs short turns over $transport, one at a time; $(nproc) cores; CANDLE_NUM_THREADS=${CANDLE_NUM_THREADS:-unset}; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for run in $(seq 1 "$runs"); do
  PALAVER_API_KEY="$key" "$bin"/palaver-loadtest "$scenario" --url "$base" \
    --assistant-id "$assistant" --input spoken --utterance "$utterance" \
    --callers 1 --turns 1 --barge-in-share 0 --pause-ms 500 \
    --max-seconds 120 --idle-timeout-seconds 60 \
    --json "$out/local-voice-$run.json" >"$work/run-$run.log" 2>&1 ||
    { echo "run $run failed:" >&2; tail -n 30 "$work/run-$run.log" >&2; exit 1; }
done

# Every reply's stored stages, and the caller's voice-to-voice per run.
sessions="$(curl -sf "$base/v1/sessions?limit=100" -H "Authorization: Bearer $key" | jq -r '.data[].id')"
for s in $sessions; do
  curl -sf "$base/v1/sessions/$s/messages?limit=100" -H "Authorization: Bearer $key" |
    jq -c '.data as $m | ($m | map(select(.role == "user")) | .[0].content) as $heard |
      $m[] | select(.role == "assistant" and .interrupted == false) |
      .latency + {heard: $heard, reply: .content}'
done >"$out/local-voice-turns.jsonl"
for run in $(seq 1 "$runs"); do
  jq '.operations["voice-to-voice"].max_ms' "$out/local-voice-$run.json"
done >"$out/local-voice-client.txt"

echo "turns stored: $(wc -l <"$out/local-voice-turns.jsonl") of $runs; ms after the end of speech, p50 / p95:"
pct='def pct($p): sort | .[((length * $p / 100) | ceil) - 1];'
for stage in transcript_ms first_token_ms first_audio_ms voice_to_voice_ms; do
  jq -rs --arg s "$stage" "$pct"' map(.[$s] | select(. != null)) |
    "  server \($s): \(pct(50)) / \(pct(95))  (n=\(length), min \(min), max \(max))"' \
    "$out/local-voice-turns.jsonl"
done
jq -rs "$pct"' "  caller voice_to_voice (last frame sent → first frame received): \(pct(50) | round) / \(pct(95) | round)  (n=\(length))"' \
  "$out/local-voice-client.txt"
echo "heard (Whisper), e.g.: $(jq -rs 'map(.heard) | unique | tojson' "$out/local-voice-turns.jsonl")"
echo "replies, e.g.: $(jq -rs '.[0:2] | map(.reply) | tojson' "$out/local-voice-turns.jsonl")"
