#!/usr/bin/env bash
# The full-SST-2 model's figures in the README: train (one epoch on all 67k rows), export,
# calibrate at 99% relative score with the default guarantee (Learn-then-Test, delta 0.1), then
# batch-1 latency through onnxruntime and through the C runtime (3 passes each), and the HTTP
# server's throughput against the monolithic server. Run on a quiet machine (nothing else
# running), from the repository root:
#   bash scripts/sst2_full_results.sh [WORK_DIR]      (about 75 minutes on 2 cores: training 18 of them)
set -euo pipefail
W=${1:-runs/sst2_full}
export HF_HUB_OFFLINE=1
mkdir -p "$W"
[ -f "$W/ckpt/eval.json" ] || python -m train.finetune --task sst2 --strategy alternating --lte --pooling mean \
    --epochs 1 --batch-size 32 --lr 5e-5 --head-lr 1e-3 --max-seq-len 64 --seed 42 --out "$W/ckpt"
python -m export.build --checkpoint "$W/ckpt" --out "$W/art"
python -m runtime.calibrate --artifact "$W/art" --task sst2 --target-relative-score 0.99 \
    --json-out results/sst2_fp32/calibration.json
python -m benchmarks.latency --artifact "$W/art" --task sst2 --passes 3 --repeats 2 --checkpoint "$W/ckpt" \
    --policies confidence lte --points 5 --out results/sst2_fp32
python -m benchmarks.latency --backend native --artifact "$W/art" --task sst2 --passes 3 --repeats 1 --no-eager \
    --policies confidence lte --points 5 --ort-pool per-session --out results/sst2_native
# Static int8 of the same checkpoint against fp32 (3 runs), and its answers alone vs in batches.
python -m export.build --checkpoint "$W/ckpt" --out "$W/art_int8" --precision int8
for r in 1 2 3; do
  python -m benchmarks.precision --artifacts "$W/art" "$W/art_int8" --task sst2 --out "$W/precision_$r"
  cp "$W/precision_$r/precision.json" results/int8_static/sst2_full/precision_run$r.json
done
python -m benchmarks.batch_agreement --artifacts "$W/art" "$W/art_int8" --task sst2 \
    --out results/int8_static/sst2_full/batch_agreement.json
# The server's policy promises the distribution's own relative score (--new-rows inf): a server
# answers an open-ended stream, not one more dev-sized sample.
rm -rf "$W/art_serve" && cp -r "$W/art" "$W/art_serve"
python -m runtime.calibrate --artifact "$W/art_serve" --task sst2 --target-relative-score 0.99 --new-rows inf \
    --json-out results/serve/sst2_full_calibration.json
python -m benchmarks.serve --artifact "$W/art_serve" \
    --servers ee-layer-native mono-request-native ee-layer-native-1t mono-request-native-1t \
    --rates 25 50 75 100 150 200 --seconds 3 --rounds 3 --search-steps 3 --passes 3 --stop-p99-ms 200 \
    --out results/serve --name serve_sst2_full_native
