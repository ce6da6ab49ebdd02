#!/usr/bin/env bash
# The one device-machine check for the GPU path (issue 5). Run on the H200 through the `device`
# tool, from the repository root:   bash scripts/gpu_check.sh
# It needs python3 with a CUDA build of PyTorch, transformers, numpy, onnxruntime and pytest (the
# H200 image has them; nothing is installed). Writes at most 8 files to $OUT (or results/gpu):
#   gpu.txt        nvidia-smi's name/driver/memory line and the torch/CUDA versions
#   gpu_tests.log  the tests marked `gpu` (CUDA graphs captured and checked against eager, fp32/fp16)
#   *.json         benchmarks.gpu for BERT-base and MiniLM-L6 shapes, batch 1, seq 128, fp16 and fp32
# About 3-4 minutes. Afterwards copy the files into results/gpu/ and commit them.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
D=${OUT:-results/gpu}
mkdir -p "$D"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$D/gpu.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_cuda_graphs.py 2>&1 | tee "$D/gpu_tests.log"
for cfg in bert-base minilm-l6; do
  for dt in fp16 fp32; do
    timeout 150 python3 -m benchmarks.latency --backend cuda-graphs --config $cfg --batch-size 1 --seq-len 128 \
        --dtype $dt --repeats 300 --out "$D" 2>&1 | tail -25
  done
done
ls -l "$D"
