#!/usr/bin/env bash
# The demo: install, make a tiny synthetic dataset, train recipes/tiny.toml on the CPU (~2 min),
# and sample videos you can open: demo/clip-seed0000.mp4 ... (plus a GIF).
# Outputs go under $HPDM_DEMO_DIR (default: the repository root).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "${HPDM_DEMO_DIR:-$root}"
[ -f data/shapes-tiny/dataset.json ] || \
  hpdm prepare --synthetic shapes data/shapes-tiny --num-videos 64 --frames 8 --height 32 --width 32
hpdm train "$root/recipes/tiny.toml" --run-dir runs/tiny ${HPDM_DEMO_TRAIN_ARGS:-}
hpdm sample --ckpt runs/tiny --class 0 --seeds 0-3 --out demo/clip.mp4 --gif
echo "demo videos:"; ls -1 demo/
