#!/usr/bin/env bash
# One GPU call on nvidia-h200-x2 (< 9 minutes): DDP scaling of `hpdm train recipes/ucf.toml` (bf16,
# 16 videos per GPU, in-memory synthetic videos) with torchrun on 2 GPUs against 1 process, eager
# then compiled; prints the scaling efficiency. Results in $OUT (2 JSON files and a log).
#   run(command="bash benchmarks/gpu_ddp.sh", kind="nvidia-h200-x2", carry=["out/gpu/whl"], timeout_s=600)
# TINY=1: recipes/tiny.toml on the CPU (gloo), a check of the script itself. MODES (default
# "eager compiled") picks the runs; each run's own limit is EAGER_T / COMPILED_T seconds (110 / 240:
# two ranks compiling at once take longer than one), the stage's EAGER_S / COMPILED_S (240 / 330).
# The device copy of the checkout may have no .git: pass the commit as HPDM_COMMIT=<sha>.
set -uo pipefail
OUT=${OUT:-out/ddp}; mkdir -p "$OUT"
source benchmarks/gpu_env.sh
# NVLink multicast stays off on this host.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
LOG="$OUT/log.txt"
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nvidia-smi topo -m; \
  echo "commit ${HPDM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"; } 2>&1 | tee "$LOG"
T=(); [ -n "${TINY:-}" ] && T=(--tiny)
MODES=${MODES:-eager compiled}
if [[ " $MODES " == *" eager "* ]]; then
  timeout "${EAGER_S:-240}" python3 benchmarks/ddp_scaling.py --nproc 2 --batch 16 --steps 60 --timeout "${EAGER_T:-110}" \
    "${T[@]}" --json "$OUT/ddp_eager.json" 2>&1 | tee -a "$LOG"
fi
if [[ " $MODES " == *" compiled "* ]]; then
  timeout "${COMPILED_S:-330}" python3 benchmarks/ddp_scaling.py --nproc 2 --batch 16 --steps 60 --compile "${T[@]}" \
    --timeout "${COMPILED_T:-240}" --json "$OUT/ddp_compiled.json" 2>&1 | tee -a "$LOG"
fi
grep -h "scaling efficiency" "$LOG"
