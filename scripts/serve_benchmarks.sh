#!/usr/bin/env bash
# The server's measurements (results/serve/): throughput (unpinned and pinned), Ray replicas,
# the Ray fault test and the 10-minute soak. ART: a calibrated SST-2 artifact, e.g.
#   python -m export.build --checkpoint CKPT --out ART
#   python -m runtime.calibrate --artifact ART --task sst2 --target-relative-score 0.99
# Run on a quiet machine, one at a time (about an hour in all).
set -euo pipefail
ART=${1:?usage: scripts/serve_benchmarks.sh ARTIFACT}
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
python -m benchmarks.scheduler --artifact "$ART" --out results/serve
python -m benchmarks.scheduler --artifact "$ART" --out results/serve/per_session --thread-pool per-session
python -m benchmarks.serve --artifact "$ART" --out results/serve
python -m benchmarks.serve --artifact "$ART" --out results/serve --pin
python -m benchmarks.serve --artifact "$ART" --out results/serve/ray_1 --servers plain-1t ray-1
python -m benchmarks.serve --artifact "$ART" --out results/serve/ray_2 --servers plain-1t ray-2
python -m benchmarks.serve_fault --artifact "$ART" --seconds 20 --clients 4 --out results/serve/fault.json
python -m benchmarks.serve_soak --artifact "$ART" --seconds 600 --out results/serve/soak.json
