#!/usr/bin/env bash
# Sampling speed of recipes/ucf.toml on one GPU: seconds per 64x256x256 video (batch 16), per level,
# with and without activation caching, for every overlap setting. Steps actually run are reduced
# (SAMPLE_STEPS, default 8,4,2) to fit the device budget; the table also extrapolates linearly to
# the recipe's 128/64/32 steps. Run from the repo root with .whl (tomli-w) carried.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD; fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu_sample.txt"
S=${SAMPLE_STEPS:-8,4,2}
python3 -m hpdm_cli bench ucf --sampling --batch 16 --overlap hw,fhw --sample-steps "$S" \
  --json "$OUT/ucf_sample_cache.json" 2>&1 | tee "$OUT/ucf_sample_cache.txt"
python3 -m hpdm_cli bench ucf --sampling --batch 16 --overlap fh,fw,f,h,w,none --cache-only --sample-steps "$S" \
  --json "$OUT/ucf_sample_overlaps.json" 2>&1 | tee "$OUT/ucf_sample_overlaps.txt"
