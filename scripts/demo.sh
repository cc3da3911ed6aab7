#!/usr/bin/env bash
# The demo: set up .venv (scripts/setup.sh), then
#  1. sample two prompts from the packaged shapes text-to-video model (36-55 s per clip on 2 CPU
#     cores): demo/red-circle-right.mp4, demo/yellow-square-down.mp4 (plus GIFs and PNG strips);
#  2. run the whole pipeline on the CPU: make a tiny synthetic dataset, train recipes/tiny.toml
#     (~2 min) and sample it: demo/tiny/clip-seed0000.mp4 ... A few CPU minutes teach that model
#     little: its clips are coloured noise, not shapes. They show the pipeline runs, not a result.
# Outputs go under $HPDM_DEMO_DIR (default: the repository root; created if missing).
#   HPDM_DEMO_PROMPT_ARGS="--steps 16,8,4" bash scripts/demo.sh   # extra arguments to the prompted `hpdm sample`
#   (fewer steps, faster; with 8,4,2 add --sigma-max 80,3,3: docs/results.md, section 78)
#   HPDM_DEMO_TRAIN_ARGS="train.steps=50" bash scripts/demo.sh   # extra arguments to `hpdm train`
#   HPDM_DEMO_SAMPLE_ARGS="--steps 8" bash scripts/demo.sh        # extra arguments to the tiny model's `hpdm sample`
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
echo "[demo] 1/2: the packaged shapes model (hpdm_cli/assets/MODEL_CARD.md)"
"$hpdm" sample --prompt "a red circle moving right on a black background" --out demo/red-circle-right.mp4 \
  --gif --png ${HPDM_DEMO_PROMPT_ARGS:-}
"$hpdm" sample --prompt "a yellow square moving down on a purple background" --out demo/yellow-square-down.mp4 \
  --gif --png ${HPDM_DEMO_PROMPT_ARGS:-}
echo "[demo] 2/2: prepare, train and sample a tiny model on the CPU (its clips are coloured noise after a few"
echo "       minutes of training: they show the pipeline, not a result)"
[ -f data/shapes-tiny/dataset.json ] || \
  "$hpdm" prepare --synthetic shapes data/shapes-tiny --num-videos 64 --frames 8 --height 32 --width 32 \
    --text-encoder none
"$hpdm" train "$root/recipes/tiny.toml" --run-dir runs/tiny ${HPDM_DEMO_TRAIN_ARGS:-}
"$hpdm" sample --ckpt runs/tiny --class 0 --seeds 0-3 --out demo/tiny/clip.mp4 --gif ${HPDM_DEMO_SAMPLE_ARGS:-}
echo "demo videos:"; ls -1 demo/ demo/tiny/
