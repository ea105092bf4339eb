#!/usr/bin/env bash
# The GPU checks as one prepared run (a lent GPU is short of time, not memory): the CUDA tests; bench/inference.py
# on the paper preset in bf16 at batch 1, 8, 32, 64 (eager, CUDA graphs, the graphs with the VQ-VAE's norms under
# autocast's fp32 policy, the parts of the model and its 15 costliest kernels); then
# bench/graph_parity.py at batch 32 (where a graphed restoration first differs from the eager one). About 7 minutes
# on an H200, within one device call's 10; each step has its own time limit, so a slow one leaves the others'
# figures; every log lands in OUT_DIR (default ./gpu-out).
#
#     bash bench/gpu.sh [OUT_DIR]
#
# Needs python3 with torch (CUDA) and the project's imports on PYTHONPATH (repo root, platform/, bench/); on a
# machine without the project's packages, carry pydantic (+ pydantic-core, annotated-types, typing-inspection,
# typing-extensions), rasterio (+ affine, cligj, click-plugins), spectral and PyWavelets as wheels.
set -uo pipefail
out=${1:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 AWS_EC2_METADATA_DISABLED=true
py=${PYTHON:-python3}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
    | tee -a "$out/gpu.txt"

echo "== CUDA tests"
timeout 140 $py -m pytest -q -s -p no:cacheprovider tests/hsivar/test_cuda.py 2>&1 | tee "$out/tests.log" \
    | grep -E "passed|failed|error|tokens|Error|assert|relative" | tail -60

echo "== paper preset, bf16"
timeout 310 $py bench/inference.py --preset paper --device cuda --precisions bf16 --batch-sizes 1,8,32,64 \
    --repeats 3 --graphs --graph-ablations autocast_norms --parts --kernels 15 > "$out/paper_bf16.log" 2>&1
grep -v '^{' "$out/paper_bf16.log" | grep -v "USDT\|profiler" | tail -100

echo "== graph parity, paper preset, batch 32"
timeout 110 $py bench/graph_parity.py --preset paper --device cuda --batch-size 32 > "$out/parity.log" 2>&1
grep -v '^{' "$out/parity.log" | cut -c1-400 | tail -12
