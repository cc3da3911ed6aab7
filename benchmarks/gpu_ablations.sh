#!/usr/bin/env bash
# The pyramid's design choices at equal training budget (the paper's Tables 2-3 on the shapes data):
# one base level trained from scratch, then the 3-level pyramid from it once per variant, each for
# the same PYR_STEPS steps of 256 videos, each exported in fp16; then FVD and faithfulness of every
# variant on the same held-out prompts, seeds and real clips (benchmarks/guidance_sweep.py, guidance
# 1.5 at level 0, 32/32/16 steps, overlap OVERLAP). Variants (VARIANTS picks and orders them):
#   default  deep fusion, adaptive computation (load [1,1,2,2,3,3]), context_prob 0.75 (the recipe)
#   shallow  model.fusion="shallow" (the RGB of the level below, concatenated to the input)
#   uniform  model.load=[3,3,3,3,3,3] (no adaptive computation: every block processes every level)
#   ctx0 / ctx025 / ctx1   diffusion.context_prob 0 / 0.25 / 1
# The base level does not depend on any of these (one level: no fusion, every block runs it), so
# every variant starts from the same base. PARALLEL=1 trains (and evaluates) the variants of one call
# side by side, one process each; on an H200 this gained nothing (three pyramids at batch 256 shared
# ~1600 videos/s, what one alone reaches: docs/benchmarks.md), so the default is one after another.
# The base stage is eager unless BASE_COMPILE=true: compilation took ~165 s of a 200-s base budget.
# Stages, so that the work splits into GPU calls of < 10 minutes on one warm machine (its /tmp/abl
# carries over between calls):
#   STAGES="base train" VARIANTS="default shallow uniform"    BASE_SECONDS=200 PYR_STEPS=500
#   STAGES="train eval" VARIANTS="ctx0 ctx025 ctx1" EVAL="default shallow uniform"
#   STAGES="eval" EVAL="ctx0 ctx025 ctx1"
# EVAL names the variants to evaluate (default: every variant exported so far).
# eval needs the I3D weights at $I3D (default /tmp/i3d-kinetics-400.ckpt; the three-part carry of
# benchmarks/gpu_shapes_quality.sh's header) and out/gpu/shapes_prompts_tokens.safetensors and
# out/gpu/whl (benchmarks/stage_gpu_inputs.sh). One JSON line per variant in $OUT/ablations.jsonl,
# then a markdown table. EXTRA adds overrides to every training stage (a CPU check of the script:
#   EXTRA='train.compile=false train.batch_size=4 data.synthetic_videos=32' BASE_SECONDS=40 PYR_STEPS=2
#   NUM=4 I3D= SWEEP_ARGS="--batch 4" STAGES="base train eval" VARIANTS="default shallow" \
#   bash benchmarks/gpu_ablations.sh; SWEEP_ARGS replaces guidance_sweep's "--batch 256 --bf16").
set -uo pipefail
OUT=${OUT:-out/ablations}; mkdir -p "$OUT"
source benchmarks/gpu_env.sh
ABL=${ABL:-/tmp/abl}; mkdir -p "$ABL"
STAGES=${STAGES:-base train eval}
VARIANTS=${VARIANTS:-default shallow uniform ctx0 ctx025 ctx1}
NUM=${NUM:-256}; OVERLAP=${OVERLAP:-hw}; PYR_STEPS=${PYR_STEPS:-600}
I3D=${I3D-/tmp/i3d-kinetics-400.ckpt}
TABLE='data.prompt_table="out/gpu/shapes_prompts_tokens.safetensors"'
want() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
overrides() {   # $1: variant name -> its recipe overrides
  case "$1" in
    default) echo "" ;;
    shallow) echo 'model.fusion="shallow"' ;;
    uniform) echo 'model.load=[3,3,3,3,3,3]' ;;
    ctx0) echo 'diffusion.context_prob=0.0' ;;
    ctx025) echo 'diffusion.context_prob=0.25' ;;
    ctx1) echo 'diffusion.context_prob=1.0' ;;
    *) echo "unknown variant $1 (default shallow uniform ctx0 ctx025 ctx1)" >&2; return 2 ;;
  esac
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
echo "commit ${HPDM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}; stages: $STAGES; variants: $VARIANTS"
T0=$SECONDS
if want base; then
  rm -rf "$ABL"/base
  # shellcheck disable=SC2086
  timeout -s TERM "${BASE_SECONDS:-240}" python3 -m hpdm_cli train recipes/shapes.toml --run-dir "$ABL/base" \
    --no-progress "$TABLE" 'pyramid.resolution=[4,16,16]' 'pyramid.patch=[4,16,16]' diffusion.p_mean=0.8 \
    train.batch_size=512 "train.steps=${BASE_STEPS:-2600}" train.lr=2e-3 "train.compile=${BASE_COMPILE:-false}" ${EXTRA:-} \
    > "$OUT/base.log" 2>&1
  echo "[base] exit $? after $((SECONDS - T0)) s"; grep -E "^training|^done|stopped" "$OUT/base.log" | tail -n 2
fi
train_variant() {   # $1: variant -> trains it from the base, exports its weights, prints one line
  local v=$1 ov t1 rc
  ov=$(overrides "$v") || return 2
  t1=$SECONDS; rm -rf "${ABL:?}/$v"
  # shellcheck disable=SC2086
  python3 -m hpdm_cli train recipes/shapes.toml --run-dir "$ABL/$v" --no-progress "$TABLE" \
    "train.steps=$PYR_STEPS" train.batch_size=256 "train.init_from=\"$ABL/base\"" $ov ${EXTRA:-} \
    > "$OUT/$v.log" 2>&1
  rc=$?
  python3 -c "from hpdm_cli.train.checkpoint import export_weights as e; e('$ABL/$v', '$ABL/$v.safetensors')" \
    2>/dev/null || echo "[$v] no weights to export"
  cp "$ABL/$v/stats.jsonl" "$OUT/$v-stats.jsonl" 2>/dev/null
  echo "[$v] $ov: exit $rc after $((SECONDS - t1)) s; $(grep -E '^step' "$OUT/$v.log" | tail -n 1)"
}
eval_variant() {   # $1: variant -> its guidance_sweep JSON lines in $OUT/eval-$1.jsonl
  local v=$1
  # shellcheck disable=SC2086
  python3 benchmarks/guidance_sweep.py "$ABL/$v.safetensors" --num "$NUM" ${SWEEP_ARGS:---batch 256 --bf16} \
    ${I3D:+--i3d-weights "$I3D"} --settings "1.5,1,1/32,32,16/$OVERLAP" 2> "$OUT/eval-$v.err" | grep '^{' \
    | python3 -c "import json, sys; [print(json.dumps({'variant': '$v', **json.loads(l)})) for l in sys.stdin]" \
    > "$OUT/eval-$v.jsonl"
  echo "[eval $v] $(grep -c . "$OUT/eval-$v.jsonl") rows after $((SECONDS - T0)) s"
}
each() {   # $1: function, rest: variants -> runs it for each, side by side when PARALLEL=1
  local f=$1 v; shift
  for v in "$@"; do
    if [ "${PARALLEL:-0}" = 1 ]; then "$f" "$v" & else "$f" "$v"; fi
  done
  wait
}
if want train; then
  # shellcheck disable=SC2086
  each train_variant $VARIANTS
fi
if want eval; then
  EVAL=${EVAL:-$(for f in "$ABL"/*.safetensors; do [ -f "$f" ] && basename "$f" .safetensors; done)}
  # shellcheck disable=SC2086
  each eval_variant $EVAL
  cat "$OUT"/eval-*.jsonl > "$OUT/ablations.jsonl"
  python3 - "$OUT/ablations.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| variant | FVD | floor | colour / shape / direction | stripes |\n|---|---|---|---|---|")
floor = {r["variant"]: r["fvd"] for r in rows if r.get("setting") == "real (floor)"}
for r in rows:
    if "colour" in r:
        print(f"| {r['variant']} | {r['fvd']:.1f} | {floor.get(r['variant'], float('nan')):.1f} | "
              f"{100 * r['colour']:.1f} / {100 * r['shape']:.1f} / {100 * r['direction']:.1f}% | {r['stripes']:.3f} |")
PY
fi
echo "total $((SECONDS - T0)) s"
