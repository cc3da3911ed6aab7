#!/usr/bin/env bash
# Training throughput of recipes/ucf.toml on one GPU: bf16 vs tf32, with and without adaptive
# computation, shallow fusion, torch.compile; plus the shapes recipe. Results land in $OUT (JSON).
# Run on the lent GPU from the repo root with .whl (tomli-w wheel) carried:
#   bash benchmarks/gpu_train.sh
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD; fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
git rev-parse --short HEAD 2>/dev/null | tee -a "$OUT/gpu.txt"
B=${UCF_BATCH:-16}
python3 -m hpdm_cli bench ucf --batch "$B" --steps 10 --warmup 3 --ablations --precision bf16,tf32 \
  --json "$OUT/ucf_train.json" 2>&1 | tee "$OUT/ucf_train.txt"
timeout 420 python3 -m hpdm_cli bench ucf train.compile=true --batch "$B" --steps 10 --warmup 3 --precision bf16 \
  --json "$OUT/ucf_train_compile.json" 2>&1 | tail -25 | tee "$OUT/ucf_train_compile.txt"
python3 -m hpdm_cli bench shapes --batch 128 --steps 10 --warmup 3 --precision bf16 \
  --json "$OUT/shapes_train.json" 2>&1 | tee "$OUT/shapes_train.txt"
