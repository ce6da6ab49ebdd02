#!/usr/bin/env bash
# Makes results/CALIBRATION.md and results/calibration.json: each calibration method's target
# checked on unseen rows (random halves of each dev set) for every artifact under ART_ROOT.
# Evaluation only (no timing), so it runs niced beside other work.
set -euo pipefail
cd "$(dirname "$0")/.."
ART_ROOT=${ART_ROOT:?set ART_ROOT to a folder of artifacts, one per data set (named by task: sst2*, stsb, mrpc, sick, rte)}
exec nice -n 10 python -m benchmarks.calibration_results --art-root "$ART_ROOT" --out results \
  --targets 0.99,0.97 --splits "${SPLITS:-50}" --resamples "${RESAMPLES:-1000}" --agreement --reuse "$@"
