#!/usr/bin/env bash
# A real training run on one GPU: the shapes dataset, class-conditional (the text encoder's package is too
# large to travel to the lent GPU machine), stopped by SIGTERM after TRAIN_SECONDS (the loop checkpoints),
# then sampled to mp4. Outputs in $OUT. Needs .whl from `gpu-wheels.sh video` (PyAV, tomli-w).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD; fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1
S=${TRAIN_SECONDS:-330}
time python3 -m hpdm_cli prepare --synthetic shapes /tmp/shapes --num-videos 4096 --frames 16 --height 64 --width 64 \
  --workers 14 --no-progress
timeout -s TERM "$S" python3 -m hpdm_cli train shapes data.path=/tmp/shapes model.cond='"class"' model.num_classes=16 \
  data.num_workers=12 train.log_every=100 train.ckpt_every=100000 --run-dir /tmp/run --no-progress
echo "train exit $?"
cp /tmp/run/stats.jsonl "$OUT/shapes_stats.jsonl"
python3 -m hpdm_cli sample --ckpt /tmp/run --class 0 --seeds 0-1 --out "$OUT/shapes_c0.mp4" --png --no-progress
python3 -m hpdm_cli sample --ckpt /tmp/run --class 6 --seeds 0 --out "$OUT/shapes_c6.mp4" --png --no-progress
ls -la "$OUT"
