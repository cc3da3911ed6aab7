#!/usr/bin/env bash
# One GPU call: does a long base-level stage at the noise levels where the background texture is
# decided teach the base level to draw the shapes data's stripes (docs/results.md, sections 9-10)?
# The base level alone (one level 4x16x16) continues from FROM with its log-sigma distribution
# moved down (BASE_NOISE), checkpointing every CKPT_EVERY steps; every checkpoint (and FROM) is then
# scored on held-out prompts: level 0 sampled alone (faithfulness and stripe R^2,
# benchmarks/base_level_faithfulness.py) and one denoiser call on noised real level 0 per sigma
# (benchmarks/denoise_texture.py). Then the 3-level pyramid trains from the last checkpoint for
# PYR_SECONDS (PYR_NOISE) and is exported in fp16 to $OUT/texture.safetensors; the run directory
# stays in /tmp/run-tex for a following call on the same machine (guidance_sweep.py: FVD).
#   FROM=hpdm_cli/assets/shapes-t2v.safetensors BASE_SECONDS=280 PYR_SECONDS=170 \
#     bash benchmarks/gpu_texture_stage.sh
# Needs out/gpu/shapes_prompts_tokens.safetensors and out/gpu/whl (benchmarks/stage_gpu_inputs.sh).
# EXTRA="..." adds overrides to both stages (a CPU check of the script: EXTRA='train.compile=false
# train.batch_size=8 data.synthetic_videos=64' BASE_SECONDS=60 PYR_SECONDS=40 CKPT_EVERY=5 NUM=4).
set -uo pipefail
OUT=${OUT:-out/result}; mkdir -p "$OUT"
source benchmarks/gpu_env.sh
FROM=${FROM:-hpdm_cli/assets/shapes-t2v.safetensors}
BASE_NOISE=${BASE_NOISE:-"diffusion.p_mean=-0.3 diffusion.p_std=1.2"}
PYR_NOISE=${PYR_NOISE:-"diffusion.p_mean=[-0.3,-1.2,-1.2] diffusion.p_std=1.2"}
NUM=${NUM:-64}
TABLE='data.prompt_table="out/gpu/shapes_prompts_tokens.safetensors"'
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
echo "commit ${HPDM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}; from $FROM; base: $BASE_NOISE; pyramid: $PYR_NOISE"
rm -rf /tmp/run-tex-base /tmp/run-tex
T0=$SECONDS
# shellcheck disable=SC2086
timeout -s TERM "${BASE_SECONDS:-280}" python3 -m hpdm_cli train recipes/shapes.toml --run-dir /tmp/run-tex-base \
  --no-progress "$TABLE" 'pyramid.resolution=[4,16,16]' 'pyramid.patch=[4,16,16]' $BASE_NOISE \
  train.batch_size=512 "train.steps=${BASE_STEPS:-1600}" train.lr=1e-3 train.warmup_steps=100 train.compile=true \
  "train.ckpt_every=${CKPT_EVERY:-400}" train.keep_last=0 "train.init_from=\"$FROM\"" ${EXTRA:-} > /tmp/train-tex-base.log 2>&1
echo "[base] exit $? after $((SECONDS - T0)) s"; grep -E "^training|videos/s" /tmp/train-tex-base.log | tail -n 3
cp /tmp/run-tex-base/stats.jsonl "$OUT/base-stats.jsonl" 2>/dev/null
score() {   # $1: a checkpoint or model file; one line of level-0 faithfulness and stripes, one per sigma
  python3 benchmarks/base_level_faithfulness.py "$1" --num "$NUM" --splits heldout 2>&1 | tail -n 1
  python3 benchmarks/denoise_texture.py "$1" --num "$NUM" --sigmas 0.1,0.2,0.4,0.7,1.0 2>&1 | tail -n 5
}
{ echo "== $FROM"; score "$FROM"; } | tee "$OUT/curve.txt"
for ck in /tmp/run-tex-base/checkpoints/ckpt-*; do
  [ -d "$ck" ] && { echo "== $ck"; score "$ck"; } | tee -a "$OUT/curve.txt"
done
T1=$SECONDS
# shellcheck disable=SC2086
timeout -s TERM "${PYR_SECONDS:-170}" python3 -m hpdm_cli train recipes/shapes.toml --run-dir /tmp/run-tex --no-progress \
  "$TABLE" $PYR_NOISE train.batch_size=256 "train.steps=${PYR_STEPS:-900}" train.lr=1e-3 train.warmup_steps=50 \
  "train.init_from=\"/tmp/run-tex-base\"" ${EXTRA:-} > /tmp/train-tex.log 2>&1
echo "[pyramid] exit $? after $((SECONDS - T1)) s"; grep -E "^training|videos/s" /tmp/train-tex.log | tail -n 3
cp /tmp/run-tex/stats.jsonl "$OUT/pyramid-stats.jsonl" 2>/dev/null
python3 -c "from hpdm_cli.train.checkpoint import export_weights as e; print('exported', e('/tmp/run-tex', '$OUT/texture.safetensors'))"
{ echo "== pyramid, level 0"; python3 benchmarks/base_level_faithfulness.py /tmp/run-tex --num "$NUM" --splits heldout 2>&1 | tail -n 1; } \
  | tee -a "$OUT/curve.txt"
echo "total $((SECONDS - T0)) s"
