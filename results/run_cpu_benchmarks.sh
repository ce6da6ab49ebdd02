#!/usr/bin/env bash
# Every CPU result under results/ (except the RTE fine-tuning itself), in the order it was made.
# Run from the repository root, with nothing else running on the machine. About 35 minutes on
# 2 cores, after the two fine-tuning runs below (RTE ~10 min, SST-2 ~20 min).
# Note: the committed latency.json files were made by this sequence with an earlier
# benchmarks.latency that timed eager in-process; their `eager` sections were then replaced by
# `python -m benchmarks.eager --latency results/<dir>/latency.json --repeats 2` (which latency now
# runs itself), and results/scaling_fp32 was re-made after the peak-RSS fix (VmHWM).
set -euo pipefail
export HF_HUB_OFFLINE=1

# RTE (issue 2's run)
[ -f runs/rte_alt_lte/eval.json ] || python -m train.finetune --task rte --strategy alternating --lte --pooling mean \
    --epochs 3 --batch-size 16 --lr 5e-5 --head-lr 1e-3 --max-seq-len 128 --seed 42 --out runs/rte_alt_lte
python -m export.build --checkpoint runs/rte_alt_lte --out artifacts/rte_alt_lte
python -m benchmarks.latency --artifact artifacts/rte_alt_lte --task rte --repeats 3 --out results/rte_alt_lte

# SST-2: one epoch (CPU budget), fp32 and int8 artifacts, calibrated defaults
[ -f runs/sst2_alt_lte/eval.json ] || python -m train.finetune --task sst2 --strategy alternating --lte --pooling mean \
    --epochs 1 --batch-size 32 --lr 5e-5 --head-lr 1e-3 --max-seq-len 64 --seed 42 --out runs/sst2_alt_lte
python -m export.build --checkpoint runs/sst2_alt_lte --out artifacts/sst2_fp32
python -m export.build --checkpoint runs/sst2_alt_lte --out artifacts/sst2_int8 --precision int8
for p in fp32 int8; do
  python -m runtime.calibrate --artifact artifacts/sst2_$p --task sst2 --target-relative-score 0.99 \
      > results/sst2_$p.calibration.txt
  python -m benchmarks.latency --artifact artifacts/sst2_$p --task sst2 --repeats 2 --out results/sst2_$p
  python -m benchmarks.throughput --artifact artifacts/sst2_$p --task sst2 --repeats 2 --out results/sst2_$p
done
python -m benchmarks.scaling --artifact artifacts/sst2_fp32 --out results/scaling_fp32
python -m benchmarks.overhead --artifact artifacts/sst2_fp32 --seq-lens 32 128 --repeats 400 --profile --out results/overhead
python -m benchmarks.concurrency --artifact artifacts/sst2_fp32 --task sst2 --out results/concurrency
python -m benchmarks.precision --artifacts artifacts/sst2_fp32 artifacts/sst2_int8 --task sst2 --out results/precision
python -m benchmarks.latency --artifact artifacts/sst2_fp32 --task sst2 --repeats 2 --policies confidence --thresholds 0.7313035459973705 0.8163829041485811 --out results/sst2_fp32_targets  # single thresholds calibrated (dry run, --no-per-layer) at 0.97 and 0.99
