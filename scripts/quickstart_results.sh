#!/usr/bin/env bash
# The quick-start model's figures in the README: latency and realization at the 99% calibrated
# policy, the chain overhead and its A/B causes, exit placement on SST-2 and STS-B, and the
# server's throughput. Run on a quiet machine (nothing else running), from the repository root:
#   bash scripts/quickstart_results.sh [WORK_DIR]       (about 60 minutes on 2 cores)
set -euo pipefail
W=${1:-runs/quickstart_results}
export HF_HUB_OFFLINE=1
mkdir -p "$W"
QS="--lte --pooling mean --head-lr 1e-3 --lr 5e-5"
[ -f "$W/sst2/eval.json" ] || python -m train.finetune --task sst2 $QS --epochs 1 --max-seq-len 64 --max-train-samples 4000 --out "$W/sst2"
[ -f "$W/stsb/eval.json" ] || python -m train.finetune --task stsb $QS --strategy alternating --epochs 2 --max-seq-len 64 --out "$W/stsb"
python -m export.build --checkpoint "$W/sst2" --out "$W/art_sst2"
python -m export.build --checkpoint "$W/sst2" --out "$W/art_sst2_x6" --exit-layers 6
python -m export.build --checkpoint "$W/sst2" --out "$W/art_sst2_signals" --head signals
python -m export.build --checkpoint "$W/sst2" --out "$W/art_sst2_128" --max-seq-len 128
python -m export.build --checkpoint "$W/stsb" --out "$W/art_stsb"

# The split's cost, raw graphs (A/B per hypothesis), and through the runtime.
python -m benchmarks.overhead_ab --artifact "$W/art_sst2" --signals-artifact "$W/art_sst2_signals" \
    --merged-artifact "$W/art_sst2_x6" --seq-lens 25 64 128 --passes 3 --repeats 100 --profile --out results/overhead
python -m benchmarks.overhead --artifact "$W/art_sst2" --task sst2 --passes 3 --name quickstart_sst2 --out results/overhead
python -m benchmarks.overhead --artifact "$W/art_sst2" --seq-len 64 --passes 3 --name quickstart_seq64 --out results/overhead
python -m benchmarks.overhead --artifact "$W/art_sst2_128" --seq-len 128 --passes 3 --name quickstart_seq128 --out results/overhead

# Exit placement: the chooser on the all-exit artifacts, then each chosen set exported.
python -m runtime.place_exits --artifact "$W/art_sst2" --task sst2 --target-relative-score 0.99 --json results/exit_placement/sst2_choice.json
python -m runtime.place_exits --artifact "$W/art_stsb" --task stsb --target-relative-score 0.99 --json results/exit_placement/stsb_choice.json
python -m export.build --checkpoint "$W/sst2" --out "$W/art_sst2_x3456" --exit-layers 3,4,5,6
python -m export.build --checkpoint "$W/stsb" --out "$W/art_stsb_x2456" --exit-layers 2,4,5,6

# 99% calibrated policies (point estimate on dev, as the placement comparison needs), latency.
for a in art_sst2:sst2 art_sst2_x3456:sst2 art_stsb:stsb art_stsb_x2456:stsb; do
  python -m runtime.calibrate --artifact "$W/${a%%:*}" --task "${a##*:}" --target-relative-score 0.99 --method point
done
python -m benchmarks.latency --artifact "$W/art_sst2" --task sst2 --passes 3 --repeats 2 --no-eager \
    --policies confidence lte --points 5 --out results/quickstart_sst2
python -m benchmarks.latency --artifact "$W/art_sst2_x3456" --task sst2 --passes 3 --repeats 2 --no-eager \
    --policies confidence --points 3 --out results/exit_placement/sst2_exits_3456
python -m benchmarks.latency --artifact "$W/art_stsb" --task stsb --passes 3 --repeats 2 --no-eager \
    --policies lte --points 3 --out results/exit_placement/stsb_all_exits
python -m benchmarks.latency --artifact "$W/art_stsb_x2456" --task stsb --passes 3 --repeats 2 --no-eager \
    --policies lte --points 3 --out results/exit_placement/stsb_exits_2456

# The server: early exit (three batching modes) against the monolithic server, then a finer grid.
python -m benchmarks.serve --artifact "$W/art_sst2" --servers ee-layer ee-request ee-none mono-request \
    --rates 50 100 150 200 300 400 500 --seconds 4 --rounds 3 --out results/serve
python -m benchmarks.serve --artifact "$W/art_sst2" --servers ee-layer mono-request \
    --rates 200 225 250 275 300 --seconds 4 --rounds 3 --out results/serve/fine
