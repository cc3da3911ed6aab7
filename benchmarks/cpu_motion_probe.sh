#!/usr/bin/env bash
# The motion's learning curve on a CPU, variants side by side (docs/results.md, section 71). The shapes base level
# alone at the guide's size (recipes/shapes-guide.toml: 0.6M parameters, 4x16^2, text tokens), its noise centred
# where the motion is decided (log-sigma N(1.5, 0.7^2): 72% of samples above sigma 3), batch 32, one thread per
# variant: with the learned position table the objects start to move after ~4000 steps (~20 minutes of a core)
# and on one axis, as the GPU pyramids do (sections 68-70); with model.pos_embed="fourier" by step 2000 on both.
# Each variant in VARIANTS (default "learned fourier") trains STEPS (7500) steps into $RUNS/<variant>, with its
# overrides from V_<variant> if set, else the table below; then benchmarks/mean_motion.py reads every checkpoint
# (each EVERY steps, 1000) and benchmarks/base_level_faithfulness.py samples NUM (32) held-out prompts from the
# last (needs out/gpu/shapes_prompts_tokens.safetensors and out/gpu/shapes_prompts_heldout.safetensors:
# benchmarks/stage_gpu_inputs.sh). Prints one line per checkpoint and variant:
#   bash benchmarks/cpu_motion_probe.sh                      # ~40 minutes on two cores
#   VARIANTS="learned fourier" STEPS=4000 bash benchmarks/cpu_motion_probe.sh
#   V_wide='model.pos_embed="fourier" diffusion.p_mean=-0.5 diffusion.p_std=1.6' VARIANTS=wide bash ...
# A quick check of the script: STEPS=4 EVERY=2 NUM=2 bash benchmarks/cpu_motion_probe.sh
set -uo pipefail
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
RUNS=${RUNS:-out/motion-probe}; mkdir -p "$RUNS"
VARIANTS=${VARIANTS:-learned fourier}
STEPS=${STEPS:-7500}
EVERY=${EVERY:-1000}
TABLES=out/gpu/shapes_prompts_tokens.safetensors,out/gpu/shapes_prompts_heldout.safetensors
overrides() {   # $1: variant -> its recipe overrides
  local var="V_$1"
  if [ -n "${!var+x}" ]; then echo "${!var}"; return; fi
  case "$1" in
    learned) echo 'model.pos_embed="learned"' ;;
    fourier) echo 'model.pos_embed="fourier"' ;;
    sincos) echo 'model.pos_embed="sincos"' ;;
    *) echo "unknown variant $1 (learned fourier sincos, or set V_$1)" >&2; return 2 ;;
  esac
}
for v in $VARIANTS; do overrides "$v" > /dev/null || exit 2; done
for f in ${TABLES//,/ }; do [ -f "$f" ] || { echo "needs $f: run bash benchmarks/stage_gpu_inputs.sh" >&2; exit 2; }; done
T0=$SECONDS
for v in $VARIANTS; do
  rm -rf "${RUNS:?}/$v"
  # shellcheck disable=SC2046
  OMP_NUM_THREADS=1 "$PY" -m hpdm_cli train recipes/shapes-guide.toml --run-dir "$RUNS/$v" --no-progress \
    'data.prompt_table="out/gpu/shapes_prompts_tokens.safetensors"' diffusion.p_mean=1.5 diffusion.p_std=0.7 \
    "train.steps=$STEPS" "train.warmup_steps=$(( STEPS < 1000 ? STEPS / 10 : 100 ))" train.compile=false \
    'train.precision="fp32"' train.batch_size=32 data.num_workers=0 train.log_every=250 "train.ckpt_every=$EVERY" \
    train.keep_last=0 $(overrides "$v") > "$RUNS/$v.log" 2>&1 &
done
wait
echo "trained in $((SECONDS - T0)) s"
for v in $VARIANTS; do
  ckpts=("$RUNS/$v"/checkpoints/ckpt-*)
  [ -e "${ckpts[0]}" ] || { echo "[$v] no checkpoint:"; tail -n 3 "$RUNS/$v.log"; continue; }
  OMP_NUM_THREADS=1 "$PY" benchmarks/mean_motion.py "${ckpts[@]}" --device cpu \
    --tables out/gpu/shapes_prompts_tokens.safetensors 2>/dev/null | grep '"track"' > "$RUNS/$v-track.jsonl" &
  OMP_NUM_THREADS=1 "$PY" benchmarks/base_level_faithfulness.py "${ckpts[-1]}" --num "${NUM:-32}" --splits heldout \
    --tables "$TABLES" --guide none --device cpu --sheet "$RUNS/$v-sheet.png" 2>/dev/null | grep '"direction"' \
    > "$RUNS/$v-faithful.jsonl" &
done
wait
echo "variant: step track (horizontal / vertical); last checkpoint sampled on held-out prompts"
for v in $VARIANTS; do
  "$PY" - "$v" "$RUNS/$v-track.jsonl" "$RUNS/$v-faithful.jsonl" "$(overrides "$v")" <<'EOF'
import json, sys
name, track, faithful, over = sys.argv[1:5]
rows = [json.loads(line) for line in open(track) if line.strip()]
print(f"{name} ({over}):", "  ".join(f"{r['step']}: {r['track']} ({r['track_h']} / {r['track_v']})" for r in rows))
for line in open(faithful):
    f = json.loads(line)
    print(f"  step {rows[-1]['step'] if rows else '?'}: direction {100 * f['direction']:.1f}% of clips with an object "
          f"({100 * f['valid']:.0f}% of {f['n']}), motion {f['motion']}")
EOF
done
echo "total $((SECONDS - T0)) s"
