#!/usr/bin/env bash
# The soak (issue 13): 100 concurrent WebSocket callers taking spoken turns
# for 30 minutes against a release server with realistic fake providers
# (STT 100 ms, LLM first token 300 ms, TTS first byte 150 ms). Each caller
# takes 5 turns (30 % of callers cut into every reply), hangs up and calls
# again with a new session, so sessions start and end throughout. The
# report gives the server's RSS and CPU over time (HTML charts) and its RSS
# growth from the end of a 5-minute warm-up to the end (medians of a minute
# of samples at each end); the goal is under 2 %.
#
# Usage: [SOAK_SECONDS=1800] [WARMUP_SECONDS=300] [CALLERS=100] \
#        [TRANSPORT=ws|webrtc] [BENCH_JSON_DIR=dir] scripts/soak.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export MAX_SECONDS="${SOAK_SECONDS:-1800}" TURNS="${TURNS:-5}" RAMP="${RAMP:-10}"
export PHASES="${PHASES:-realistic}"
export LOADTEST_ARGS="--repeat-calls --warmup-seconds ${WARMUP_SECONDS:-300} ${LOADTEST_ARGS:-}"
exec scripts/bench-voice.sh "${CALLERS:-100}"
