#!/usr/bin/env bash
# The long fuzz pass over manifest loading and predict's input parsing (tests/test_fuzz.py):
# each of the four properties keeps drawing fresh examples for SECONDS/4 seconds.
#   bash scripts/fuzz_runtime.sh [SECONDS]     (default 600: ten minutes in all)
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-600}
export BERXIT_FUZZ_SECONDS=$(( total / 4 )) HF_HUB_OFFLINE=1 BERXIT_FUZZ_REPORT=${BERXIT_FUZZ_REPORT:-fuzz_report.txt}
rm -f "$BERXIT_FUZZ_REPORT"
python -m pytest -q -p no:cacheprovider tests/test_fuzz.py
cat "$BERXIT_FUZZ_REPORT"
