#!/usr/bin/env bash
# One or several GPU calls: the 32x128x128 shapes model grown from the packaged 16x64x64 one
# (recipes/shapes128-grown.toml; docs/results.md, section 24), trained and measured.
#  * START=1 saves the grown model as it starts (`hpdm train ... train.steps=0`) in /tmp/run-grown0;
#  * TRAIN_SECONDS>0 trains /tmp/run-grown for that long (STEPS in its cosine schedule, CUDA graphs,
#    a checkpoint every 250 steps; COMPILE=false trains eagerly: on a cold machine the CUDA graphs'
#    compilation takes ~400 s of a 600-s call, section 37); the same command in a later call on the
#    warm machine resumes it;
#    the newest weights are exported in fp16 to $OUT/grown.safetensors;
#  * SWEEP=1 scores the trained, then the untrained run (those with a checkpoint; trained first, so a
#    call that runs out of time still has its figures) on EVAL_NUM held-out prompts per side with
#    benchmarks/guidance_sweep.py (FVD against real 32x128^2 clips with the floor and the trivial
#    baselines, faithfulness, stripes, a contact sheet in $OUT/sheets), SETTINGS as there (default
#    the recipe's sampling without tile overlap); it needs the I3D file at $I3D, or I3D_PACK (the
#    file packed by benchmarks/pickle_pack.py, 43 MB: it travels in one call) to unpack there.
#    SCORE="a.safetensors ..." scores those exported weights instead of the runs; SWEEP_FLAGS adds
#    guidance_sweep.py's flags, e.g. "--bf16 --rows 0:128 --save $OUT/parts" for one part of a
#    sweep too long for one call (guidance_sweep.py --merge scores the parts, on any machine), or
#    "--bf16 --chunk 128 --save $OUT/parts" to keep every 128 clips as they are scored: a call that runs
#    out of time still returns them, and the next call, given them back in $OUT/parts (carry the
#    returned folder and copy it there first), samples only the rest. At most 8 files come back from a
#    call: bound the sweep with `timeout` and delete the parts it was given before the call ends.
# One self-contained scoring call (docs/results.md, section 37): the checkout without the tracked
# PNGs and the packaged model (`git ls-files 'docs/results/*.png' | xargs rm; rm
# hpdm_cli/assets/shapes-t2v.safetensors`, restored afterwards by `git checkout -- docs/results
# hpdm_cli/assets`), carrying out/gpu/whl-min, out/gpu/shapes_prompts_heldout.safetensors,
# out/i3dp/i3d.pack and the weights (64.7 MB of the 67.1 allowed with a 16.7 MB model):
#   SWEEP=1 SCORE=out/grown.safetensors I3D_PACK=out/i3dp/i3d.pack WHL=out/gpu/whl-min \
#     SETTINGS=1.5,1,1,1/32,48,24,24/hw SWEEP_FLAGS="--bf16 --rows 0:128 --save $OUT/parts" bash benchmarks/gpu_grown_stage.sh
# Measured so: docs/results.md, section 25 (3000 steps over two calls, then the sweep at N = 256 in
# a third, 588 s), section 33 (TRAIN_SECONDS=540 STEPS=2500: all steps in one cold call, 433 s) and
# section 36 (the same command on another cold machine compiled for ~400 s and stopped at step 1281;
# TRAIN_SECONDS=330 on the warm machine finished it in 186 s). Export and score in separate calls:
# a machine can be replaced between calls, and the exported weights are then all that is left.
# The three I3D parts, the wheels and the prompt tables do not travel in one call: bring the parts
# over three calls on one warm machine, as benchmarks/gpu_texture_stage.sh's users do, e.g.
#   1. carry out/gpu/whl, out/gpu/shapes_prompts_tokens.safetensors, out/i3dp/part-00:
#      mkdir -p /tmp/i3d && cp out/i3dp/part-00 /tmp/i3d/ && START=1 TRAIN_SECONDS=480 bash benchmarks/gpu_grown_stage.sh
#   2. the same with part-01 and TRAIN_SECONDS=520
#   3. carry ... out/gpu/shapes_prompts_heldout.safetensors, part-02: cp out/i3dp/part-02 /tmp/i3d/ &&
#      cat /tmp/i3d/part-0* > /tmp/i3d-kinetics-400.ckpt && SWEEP=1 EVAL_NUM=256 bash ...
# SAVE_COMPILE_CACHE=1 returns torch.compile's caches as $OUT/compile-cache.tgz; carry it to a later cold machine
# as COMPILE_CACHE=<its path> (benchmarks/gpu_env.sh) to skip most of the compilation (on a CPU 68 -> 10 s for a
# tiny model, docs/benchmarks.md, twenty-sixth visit; for this model on an H100 92 MB: too large to come back,
# twenty-seventh visit).
# A CPU check of the script: EXTRA='train.compile=false train.precision=fp32 train.batch_size=2
#   data.synthetic_videos=16 data.num_workers=0' TRAIN_SECONDS=60 START=1 SWEEP=1 EVAL_NUM=2 \
#   SETTINGS=1.5,1,1,1/16,16,8,8/none I3D=out/gpu/i3d-kinetics-400.ckpt BATCH=2 SWEEP_FLAGS= \
#   PATH=.venv/bin:$PATH bash benchmarks/gpu_grown_stage.sh
set -uo pipefail
OUT=${OUT:-out/result}; mkdir -p "$OUT"
source benchmarks/gpu_env.sh
RUN=${RUN:-/tmp/run-grown}
I3D=${I3D:-/tmp/i3d-kinetics-400.ckpt}
SETTINGS=${SETTINGS:-1.5,1,1,1/32,48,24,24/none}
TABLE='data.prompt_table="out/gpu/shapes_prompts_tokens.safetensors"'
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
echo "commit ${HPDM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}; run $RUN"
T0=$SECONDS
train() {   # $1: run directory, $2: seconds, then overrides; appends to /tmp/train-grown.log
  local dir=$1 secs=$2; shift 2
  # shellcheck disable=SC2086
  timeout --preserve-status -s TERM "$secs" python3 -m hpdm_cli train recipes/shapes128-grown.toml --run-dir "$dir" \
    --no-progress "$TABLE" "train.compile=${COMPILE:-\"reduce-overhead\"}" train.ckpt_every=250 train.keep_last=0 "$@" ${EXTRA:-} \
    >> /tmp/train-grown.log 2>&1
}
if [ "${START:-0}" = 1 ] && ! ls /tmp/run-grown0/checkpoints/ckpt-* >/dev/null 2>&1; then
  train /tmp/run-grown0 300 train.steps=0; echo "[start] exit $?"; grep -E "^init_from|starting weights" /tmp/train-grown.log | tail -n 2
fi
if [ "${TRAIN_SECONDS:-0}" -gt 0 ]; then
  T1=$SECONDS
  train "$RUN" "$TRAIN_SECONDS" "train.steps=${STEPS:-2500}"; rc=$?
  echo "[train] exit $rc after $((SECONDS - T1)) s"
  grep -E "^init_from|^resum|^training|videos/s|stopped|^done" /tmp/train-grown.log | tail -n 4
  cp "$RUN"/stats.jsonl "$OUT/grown-stats.jsonl" 2>/dev/null
  export_to "$RUN" "$OUT/grown.safetensors"
  [ "${SAVE_COMPILE_CACHE:-0}" = 1 ] && save_compile_cache
fi
if [ "${SWEEP:-0}" = 1 ]; then
  if [ ! -f "$I3D" ] && [ -n "${I3D_PACK:-}" ]; then python3 benchmarks/pickle_pack.py unpack "$I3D_PACK" "$I3D"; fi
  [ -f "$I3D" ] || { echo "SWEEP=1 needs the I3D weights at $I3D (or I3D_PACK)"; exit 2; }
  runs=()
  if [ -n "${SCORE:-}" ]; then read -r -a runs <<< "$SCORE"; else
    for r in "$RUN" /tmp/run-grown0; do ls "$r"/checkpoints/ckpt-* >/dev/null 2>&1 && runs+=("$r"); done
  fi
  for r in "${runs[@]}"; do
    echo "== $r"
    # shellcheck disable=SC2086
    python3 benchmarks/guidance_sweep.py "$r" --num "${EVAL_NUM:-256}" --batch "${BATCH:-256}" ${SWEEP_FLAGS---bf16} \
      --settings "$SETTINGS" --i3d-weights "$I3D" --tables out/gpu/shapes_prompts_heldout.safetensors \
      --sheets "$OUT/sheets-$(basename "$r" .safetensors)" 2>&1 | grep -v "^WARNING"
  done
fi
echo "total $((SECONDS - T0)) s"
