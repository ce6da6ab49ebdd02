#!/usr/bin/env bash
# The long fuzz pass over the native runtime's weights-file reader (runtime/native/fuzz):
# libFuzzer (clang -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined) when clang is installed, else the
# standalone mutation driver built with gcc + ASan/UBSan. Seeds: weights files given, or
# those of artifacts under $BERXIT_FUZZ_SEEDS (a folder searched for native_weights.bin).
#   bash scripts/fuzz_native.sh [SECONDS] [WEIGHTS_FILE...]   (default 600 seconds)
# With BERXIT_FUZZ_ARTIFACT=ART (and clang) the tokenizer target runs SECONDS more over ART's vocabulary.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}; shift || true
seeds=("$@")
if [ ${#seeds[@]} -eq 0 ]; then
  mapfile -t seeds < <(find "${BERXIT_FUZZ_SEEDS:-.}" -path '*native_weights.bin' -size -5M 2>/dev/null | head -8)
fi
[ ${#seeds[@]} -gt 0 ] || { echo "no seed weights files: pass some (an export writes ARTIFACT/native_weights.bin)" >&2; exit 2; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
src=(runtime/native/api.c runtime/native/weights.c runtime/native/forward.c runtime/native/gemm.c runtime/native/policy.c runtime/native/threads.c runtime/native/tokenizer.c)
clang=$(command -v clang || command -v clang-14 || true)
if [ -n "$clang" ]; then
  "$clang" -std=c11 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Iruntime/native -o "$work/fuzz" \
    runtime/native/fuzz/fuzz_weights.c "${src[@]}" -lm -lpthread
  mkdir "$work/corpus"; i=0; for s in "${seeds[@]}"; do cp "$s" "$work/corpus/seed$((i++)).bin"; done
  echo "libFuzzer ($("$clang" --version | head -1)), ${secs} s, seeds: ${seeds[*]}"
  keep=${TMPDIR:-/tmp}/berxit-fuzz-; echo "crashing / slow inputs, if any: $keep*"
  "$work/fuzz" -max_total_time="$secs" -max_len=200000 -print_final_stats=1 -artifact_prefix="$keep" "$work/corpus" 2>&1 | \
    grep -E "^#[0-9]+.*(DONE|INITED)|Done|stat::|ERROR|SUMMARY" || true
  test "${PIPESTATUS[0]}" -eq 0
  if [ -n "${BERXIT_FUZZ_ARTIFACT:-}" ]; then  # and the WordPiece tokenizer, over that artifact's vocabulary
    "$clang" -std=c11 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Iruntime/native -o "$work/fuzz_tok" \
      runtime/native/fuzz/fuzz_tokenizer.c "${src[@]}" -lm -lpthread
    mkdir "$work/tcorpus"; printf 'H\xc3\xa9llo w\xc3\xb6rld \xe4\xb8\xad [SEP] x\x01second' > "$work/tcorpus/seed"
    echo "tokenizer: libFuzzer, ${secs} s, vocabulary of $BERXIT_FUZZ_ARTIFACT"
    "$work/fuzz_tok" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="$keep" "$work/tcorpus" 2>&1 | \
      grep -E "^#[0-9]+.*(DONE|INITED)|Done|stat::number|ERROR|SUMMARY" || true
    test "${PIPESTATUS[0]}" -eq 0
  fi
else
  cc -std=c11 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -Iruntime/native -o "$work/fuzz" \
    runtime/native/fuzz/fuzz_weights.c runtime/native/fuzz/fuzz_driver.c "${src[@]}" -lm -lpthread
  echo "standalone mutation driver (gcc, ASan/UBSan; not coverage guided), ${secs} s, seeds: ${seeds[*]}"
  "$work/fuzz" "$secs" "${seeds[@]}"
fi
