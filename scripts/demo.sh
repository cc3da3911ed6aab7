#!/usr/bin/env bash
# The demo: set up .venv (scripts/setup.sh), make a tiny synthetic dataset, train recipes/tiny.toml
# on the CPU (~2 min), and sample videos you can open: demo/clip-seed0000.mp4 ... (plus a GIF).
# Outputs go under $HPDM_DEMO_DIR (default: the repository root; created if missing).
#   HPDM_DEMO_TRAIN_ARGS="train.steps=50" bash scripts/demo.sh   # extra arguments to `hpdm train`
#   HPDM_DEMO_SAMPLE_ARGS="--steps 8" bash scripts/demo.sh        # extra arguments to `hpdm sample`
#   HPDM_SKIP_SETUP=1 bash scripts/demo.sh   # no set-up: use the `hpdm` found on PATH
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ "${HPDM_SKIP_SETUP:-0}" = 1 ]; then
  hpdm=$(command -v hpdm) || { echo "demo: HPDM_SKIP_SETUP=1 but no hpdm on PATH" >&2; exit 2; }
else
  bash "$root/scripts/setup.sh"
  hpdm=$root/.venv/bin/hpdm
fi
dir=${HPDM_DEMO_DIR:-$root}
mkdir -p "$dir"
cd "$dir"
[ -f data/shapes-tiny/dataset.json ] || \
  "$hpdm" prepare --synthetic shapes data/shapes-tiny --num-videos 64 --frames 8 --height 32 --width 32
"$hpdm" train "$root/recipes/tiny.toml" --run-dir runs/tiny ${HPDM_DEMO_TRAIN_ARGS:-}
"$hpdm" sample --ckpt runs/tiny --class 0 --seeds 0-3 --out demo/clip.mp4 --gif ${HPDM_DEMO_SAMPLE_ARGS:-}
echo "demo videos:"; ls -1 demo/
