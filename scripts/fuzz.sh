#!/usr/bin/env bash
# Fuzzes what strangers send the server, each target for a set time, and
# prints one line per target: runs, seconds, corpus size, crashes. A crash
# leaves its input in fuzz/artifacts/<target>/; turn it into a regression
# test beside the code it broke, then fix the code.
#
# Usage: scripts/fuzz.sh [seconds per target] [target…]
#   seconds   default 300
#   targets   default: every target in fuzz/Cargo.toml
#             pcm_frame    a WebSocket client's 20 ms PCM16 frame
#             opus_packet  a caller's Opus packet (WebRTC, or WebSocket Opus)
#             sdp_offer    an SDP offer, through the join path's negotiation
#             session_message  a voice session's client text message
#             rooms_message    a rooms WebSocket client frame
#
# Needs the nightly toolchain (libFuzzer's instrumentation) and cargo-fuzz,
# which it installs from crates.io when missing. Not part of `make test`:
# the inputs that once crashed are regression tests there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

seconds="${1:-300}"
shift || true
if [ $# -gt 0 ]; then targets=("$@"); else targets=(pcm_frame opus_packet sdp_offer session_message rooms_message); fi

rustup toolchain list | grep -q '^nightly' || {
  echo "fuzz: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
  exit 1
}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

mkdir -p logs
printf '%-12s %12s %8s %8s %8s\n' target runs seconds corpus crashes
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "artifacts/$target"
  # Seeds: the inputs kept in seeds/<target> (real offers, real packets).
  if [ -d "seeds/$target" ]; then cp -n "seeds/$target"/* "corpus/$target"/ 2>/dev/null || true; fi
  log="logs/$target.log"
  set +e
  cargo +nightly fuzz run "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1
  status=$?
  set -e
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$' || echo '?')
  crashes=$(find "artifacts/$target" -type f | wc -l)
  corpus=$(find "corpus/$target" -type f | wc -l)
  printf '%-12s %12s %8s %8s %8s\n' "$target" "$runs" "$seconds" "$corpus" "$crashes"
  if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
    echo "fuzz: $target failed to run (exit $status); see fuzz/$log" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
done
