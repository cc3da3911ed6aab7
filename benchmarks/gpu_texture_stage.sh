#!/usr/bin/env bash
# One or two GPU calls: does a long base-level stage at the noise levels where the background
# texture is decided teach the base level to draw the shapes data's stripes (docs/results.md,
# sections 9-12)? The base level alone (one level 4x16x16) continues from FROM with its log-sigma
# distribution moved down (BASE_NOISE), at BASE_BATCH videos per step (the stripes are a plateau
# left after a number of optimiser *steps*, section 12: a small batch buys more of them), compiled
# as BASE_COMPILE asks ("reduce-overhead": CUDA graphs, for a launch-bound small model; if that
# fails before training, the stage reruns with plain compilation), checkpointing every CKPT_EVERY
# steps; every checkpoint (and FROM) is then scored on held-out prompts: level 0 sampled alone
# (faithfulness and stripe R^2, benchmarks/base_level_faithfulness.py) and one denoiser call on
# noised real level 0 per sigma (benchmarks/denoise_texture.py); the last one is exported in fp16
# to $OUT/base.safetensors. Then the 3-level pyramid trains from it for PYR_SECONDS (PYR_NOISE) and
# is exported in fp16 to $OUT/texture.safetensors; its run stays in /tmp/run-tex for a following
# call on the same machine (guidance_sweep.py: FVD). BASE_SECONDS=0 skips the base stage (the
# pyramid then starts from PYR_FROM, default the base stage's run or $FROM; PYR_FROM=/tmp/run-tex
# continues the previous call's pyramid, moved aside first); PYR_BATCH (default 256), PYR_STEPS
# (900) and PYR_COMPILE (default true; "reduce-overhead" for CUDA graphs, with the same fallback as
# the base stage's) set its step; PYR_SECONDS=0 skips
# the pyramid. PYR_RESUME=1 resumes /tmp/run-tex if it has a checkpoint (a long schedule over several
# calls on one warm machine: repeat the same command, PYR_FROM and PYR_STEPS unchanged; the first
# call starts it as usual). SCORE_FROM=0 skips scoring FROM (its figures: docs/results.md, section 10). FROM= (empty)
# trains the base level from scratch (with a new architecture, e.g. EXTRA=model.qk_norm=true).
#   FROM=hpdm_cli/assets/shapes-t2v.safetensors BASE_SECONDS=280 PYR_SECONDS=170 \
#     bash benchmarks/gpu_texture_stage.sh
#   BASE_BATCH=128 BASE_STEPS=20000 BASE_COMPILE=reduce-overhead CKPT_EVERY=2500 BASE_SECONDS=420 \
#     PYR_SECONDS=0 bash benchmarks/gpu_texture_stage.sh             # many small steps, base only
# Needs out/gpu/shapes_prompts_tokens.safetensors and out/gpu/whl (benchmarks/stage_gpu_inputs.sh).
# EXTRA="..." adds overrides to both stages (a CPU check of the script: EXTRA='train.compile=false
# train.batch_size=8 data.synthetic_videos=64' BASE_SECONDS=60 PYR_SECONDS=40 CKPT_EVERY=5 NUM=4).
set -uo pipefail
OUT=${OUT:-out/result}; mkdir -p "$OUT"
source benchmarks/gpu_env.sh
FROM=${FROM-hpdm_cli/assets/shapes-t2v.safetensors}
BASE_NOISE=${BASE_NOISE:-"diffusion.p_mean=-0.3 diffusion.p_std=1.2"}
PYR_NOISE=${PYR_NOISE:-"diffusion.p_mean=[-0.3,-1.2,-1.2] diffusion.p_std=1.2"}
BASE_SECONDS=${BASE_SECONDS:-280}; PYR_SECONDS=${PYR_SECONDS:-170}
NUM=${NUM:-64}
TABLE='data.prompt_table="out/gpu/shapes_prompts_tokens.safetensors"'
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
echo "commit ${HPDM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}; from $FROM; base: $BASE_NOISE, batch ${BASE_BATCH:-512}, compile ${BASE_COMPILE:-true}; pyramid: $PYR_NOISE"
source benchmarks/base_scores.sh
score() { score_base "$1" "$NUM"; }   # $1: a checkpoint or model file
train_cmd() {   # $1: the stage's cache name; sets TRAIN to the `hpdm train` command line (an array)
  # With COMPILE_CACHE=PREFIX, torch.compile's caches are loaded from PREFIX-$1.part-* before
  # training and saved back after it (benchmarks/compile_cache.py; carry the parts to a fresh machine).
  if [ -n "${COMPILE_CACHE:-}" ]; then
    TRAIN=(python3 benchmarks/compile_cache.py --cache "$COMPILE_CACHE-$1" -- train)
  else
    TRAIN=(python3 -m hpdm_cli train)
  fi
}
base_stage() {   # $1: seconds, $2: train.compile setting
  train_cmd base
  # shellcheck disable=SC2086
  timeout --preserve-status -s TERM "$1" "${TRAIN[@]}" recipes/shapes.toml --run-dir /tmp/run-tex-base \
    --no-progress "$TABLE" 'pyramid.resolution=[4,16,16]' 'pyramid.patch=[4,16,16]' $BASE_NOISE \
    "train.batch_size=${BASE_BATCH:-512}" "train.steps=${BASE_STEPS:-1600}" train.lr=1e-3 train.warmup_steps=100 \
    "train.compile=$2" "train.ckpt_every=${CKPT_EVERY:-400}" train.keep_last=0 "train.init_from=\"$FROM\"" \
    ${EXTRA:-} >> /tmp/train-tex-base.log 2>&1
}
pyr_stage() {   # $1: seconds, $2: train.compile setting
  train_cmd pyr
  # shellcheck disable=SC2086
  timeout --preserve-status -s TERM "$1" "${TRAIN[@]}" recipes/shapes.toml --run-dir /tmp/run-tex --no-progress \
    "$TABLE" $PYR_NOISE "train.batch_size=${PYR_BATCH:-256}" "train.steps=${PYR_STEPS:-900}" train.lr=1e-3 \
    train.warmup_steps=50 "train.compile=$2" "train.init_from=\"$PYR_FROM\"" ${EXTRA:-} >> /tmp/train-tex.log 2>&1
}
with_fallback() {   # $1: stage function, $2: its run dir, $3: its log, $4: seconds, $5: train.compile setting
  # The stage compiled as asked; if that fails before its first checkpoint (e.g. CUDA graphs), the
  # stage reruns with plain compilation for the seconds left. Returns the training process's own
  # exit status (timeout --preserve-status): 0 finished, 143 stopped by the time limit's SIGTERM
  # (checkpoint saved if the log says so), 137 killed, 139 / 134 crashed (a traceback in the log).
  local t0=$SECONDS rc setting=$5
  [ "$setting" = true ] || [ "$setting" = false ] || setting="\"$setting\""
  "$1" "$4" "$setting"; rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 143 ] && ! ls "$2"/checkpoints/ckpt-* >/dev/null 2>&1; then
    echo "[$1] train.compile=$setting failed (exit $rc) after $((SECONDS - t0)) s:"; tail -n 5 "$3"
    rm -rf "$2"
    "$1" "$(($4 - (SECONDS - t0)))" true; rc=$?
  fi
  return "$rc"
}
T0=$SECONDS
if [ "$BASE_SECONDS" -gt 0 ]; then
  rm -rf /tmp/run-tex-base /tmp/train-tex-base.log
  with_fallback base_stage /tmp/run-tex-base /tmp/train-tex-base.log "$BASE_SECONDS" "${BASE_COMPILE:-true}"; rc=$?
  echo "[base] exit $rc after $((SECONDS - T0)) s"; grep -E "^training|videos/s" /tmp/train-tex-base.log | tail -n 3
  cp /tmp/run-tex-base/stats.jsonl "$OUT/base-stats.jsonl" 2>/dev/null
  : > "$OUT/curve.txt"
  [ "${SCORE_FROM:-1}" = 1 ] && [ -n "$FROM" ] && { echo "== $FROM"; score "$FROM"; } | tee -a "$OUT/curve.txt"
  for ck in /tmp/run-tex-base/checkpoints/ckpt-*; do
    [ -d "$ck" ] && { echo "== $ck"; score "$ck"; } | tee -a "$OUT/curve.txt"
  done
  ls /tmp/run-tex-base/checkpoints/ckpt-* >/dev/null 2>&1 && export_to /tmp/run-tex-base "$OUT/base.safetensors"
fi
if [ "$PYR_SECONDS" -gt 0 ]; then
  PYR_FROM=${PYR_FROM:-$( [ -d /tmp/run-tex-base/checkpoints ] && echo /tmp/run-tex-base || echo "$FROM")}
  if [ "${PYR_RESUME:-0}" = 1 ] && ls /tmp/run-tex/checkpoints/ckpt-* >/dev/null 2>&1; then
    # resume the previous call's run where its time limit stopped it (same command: same schedule)
    echo "[pyramid] resuming /tmp/run-tex at $(basename "$(ls -d /tmp/run-tex/checkpoints/ckpt-* | tail -n 1)")"
  else
    if [ "${PYR_FROM%/}" = /tmp/run-tex ]; then     # continue the previous pyramid: keep it as the start
      rm -rf /tmp/run-tex-prev && mv /tmp/run-tex /tmp/run-tex-prev && PYR_FROM=/tmp/run-tex-prev
    fi
    echo "[pyramid] from $PYR_FROM, batch ${PYR_BATCH:-256}, compile ${PYR_COMPILE:-true}"; rm -rf /tmp/run-tex
    : > /tmp/train-tex.log
  fi
  T1=$SECONDS
  with_fallback pyr_stage /tmp/run-tex /tmp/train-tex.log "$PYR_SECONDS" "${PYR_COMPILE:-true}"; rc=$?
  echo "[pyramid] exit $rc after $((SECONDS - T1)) s"; grep -E "^training|videos/s|stopped" /tmp/train-tex.log | tail -n 3
  cp /tmp/run-tex/stats.jsonl "$OUT/pyramid-stats.jsonl" 2>/dev/null
  export_to /tmp/run-tex "$OUT/texture.safetensors"
  { echo "== pyramid, level 0"; python3 benchmarks/base_level_faithfulness.py /tmp/run-tex --num "$NUM" --splits heldout 2>&1 | tail -n 1; } \
    | tee -a "$OUT/curve.txt"
fi
if [ -n "${COMPILE_CACHE:-}" ] && [ "$(dirname "$COMPILE_CACHE")" != "$OUT" ]; then
  cp "$COMPILE_CACHE"-*.part-* "$OUT"/ 2>/dev/null && ls -la "$OUT"/*.part-*    # they come back with the results
fi
echo "total $((SECONDS - T0)) s"
