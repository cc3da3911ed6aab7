#!/usr/bin/env bash
# Several shapes base levels (one level, 4x16x16) trained side by side on one GPU, then scored: does a
# variant draw the background stripes (docs/results.md, sections 12-19)? VARIANTS train at once,
# one process each, each for SECONDS_EACH (start-up and graph capture included) from FROM (empty:
# from scratch), checkpointing every CKPT_EVERY steps into $RUNS/<variant>. Side by side they share
# the H200's ~5300 videos/s of base-level steps (batch 128, CUDA graphs: one alone ~5360, three
# ~1750 each; docs/benchmarks.md), and their 2-3 minutes of compilation and graph capture overlap. Then every
# checkpoint of every variant is scored on NUM held-out prompts (benchmarks/base_scores.sh: level 0
# sampled alone, and one denoiser call per sigma on noised real level 0), the variants side by
# side again; one JSON line per (variant, checkpoint) in $OUT/score-<variant>.jsonl as each is
# scored, all of them in $OUT/base-variants.jsonl, the logged steps in $OUT/<variant>-stats.jsonl
# (2 files per variant + 1: three variants fit the 8 files a GPU call returns; the training logs
# stay in $RUNS/<variant>.log, their last lines printed), and a markdown table at the end. The runs
# stay in $RUNS for a following call on the same warm machine (e.g. gpu_texture_stage.sh with
# PYR_FROM=$RUNS/<variant>).
# A variant's overrides: the environment variable V_<variant> if set, else the table below:
#   qkwide    model.qk_norm, log-sigma N(0, 1.4^2)      (docs/results.md, section 18)
#   qkband    model.qk_norm, log-sigma N(-1, 1)         (~35% of samples in the stripes' band, sigma 0.07-0.28)
#   plainband no qk_norm,     log-sigma N(-1, 1)        (section 19: stripes from ~4000 steps, no direction)
#   qkwide1   qkwide, seed 1
# RESUME=1 continues the variants' runs left in $RUNS by an earlier call on the same warm machine
# (a larger STEPS extends them) instead of starting them afresh. EXPORT="v ..." writes those
# variants' newest EMA weights in fp16 to $OUT/<v>.safetensors (16.4 MB: one file a call returns),
# for a CPU look (benchmarks/base_level_faithfulness.py) or a pyramid started from them;
# EXPORT_ALL="v ..." every checkpoint of those variants, as $OUT/<v>-<step>.safetensors (small
# models: e.g. guide models for autoguidance, docs/results.md section 43, at several training lengths).
# SCORE=0 skips the scoring (training and exports only).
# e.g.  VARIANTS="qkwide qkband plainband" SECONDS_EACH=480 bash benchmarks/gpu_base_variants.sh
#       V_slow="model.qk_norm=true train.lr=5e-4" VARIANTS="qkband slow" bash benchmarks/gpu_base_variants.sh
#       (a V_<name> may set its own train.init_from="FILE": its overrides come after FROM's)
# Needs out/gpu/shapes_prompts_tokens.safetensors and out/gpu/whl (benchmarks/stage_gpu_inputs.sh).
# EXTRA adds overrides to every variant (a CPU check of the script: EXTRA='train.compile=false
# train.batch_size=4 data.synthetic_videos=32' COMPILE=false SECONDS_EACH=60 CKPT_EVERY=5 NUM=4).
set -uo pipefail
OUT=${OUT:-out/base-variants}; mkdir -p "$OUT"
source benchmarks/gpu_env.sh
source benchmarks/base_scores.sh
RUNS=${RUNS:-/tmp/base-variants}; mkdir -p "$RUNS"
VARIANTS=${VARIANTS:-qkwide qkband plainband}
FROM=${FROM-}
NUM=${NUM:-64}
COMPILE=${COMPILE:-reduce-overhead}
[ "$COMPILE" = true ] || [ "$COMPILE" = false ] || COMPILE="\"$COMPILE\""
TABLE='data.prompt_table="out/gpu/shapes_prompts_tokens.safetensors"'
overrides() {   # $1: variant -> its recipe overrides
  local var="V_$1"
  if [ -n "${!var+x}" ]; then echo "${!var}"; return; fi
  case "$1" in
    qkwide) echo 'model.qk_norm=true diffusion.p_mean=0.0 diffusion.p_std=1.4' ;;
    qkband) echo 'model.qk_norm=true diffusion.p_mean=-1.0 diffusion.p_std=1.0' ;;
    plainband) echo 'diffusion.p_mean=-1.0 diffusion.p_std=1.0' ;;
    qkwide1) echo 'model.qk_norm=true diffusion.p_mean=0.0 diffusion.p_std=1.4 train.seed=1' ;;
    *) echo "unknown variant $1 (qkwide qkband plainband qkwide1, or set V_$1)" >&2; return 2 ;;
  esac
}
train_variant() {   # $1: variant -> trains it for SECONDS_EACH into $RUNS/$1
  local v=$1 ov rc
  ov=$(overrides "$v") || return 2
  [ "${RESUME:-0}" = 1 ] || rm -rf "${RUNS:?}/$v"
  # shellcheck disable=SC2086
  timeout --preserve-status -s TERM "${SECONDS_EACH:-480}" python3 -m hpdm_cli train recipes/shapes.toml --run-dir "$RUNS/$v" \
    --no-progress "$TABLE" 'pyramid.resolution=[4,16,16]' 'pyramid.patch=[4,16,16]' \
    "train.batch_size=${BATCH:-128}" "train.steps=${STEPS:-10000}" train.lr=1e-3 train.warmup_steps=100 \
    "train.compile=$COMPILE" "train.ckpt_every=${CKPT_EVERY:-3000}" train.keep_last=0 "train.init_from=\"$FROM\"" \
    $ov ${EXTRA:-} > "$RUNS/$v.log" 2>&1
  rc=$?
  cp "$RUNS/$v/stats.jsonl" "$OUT/$v-stats.jsonl" 2>/dev/null
  # Its warnings and last lines: the last logged step, and whether the SIGTERM checkpoint was saved
  # (two H200 runs with CUDA graphs, docs/results.md sections 18 and 20, stopped without one or any
  # message). The exit status is the training process's own (--preserve-status): 0 finished, 143
  # stopped by the SIGTERM (saved if the log says so), 137 killed outright (e.g. by the host's OOM killer).
  echo "[$v] $ov: exit $rc; warnings and last lines of the log:"
  { grep -E "warning|Error" "$RUNS/$v.log" | tail -n 3; tail -n 2 "$RUNS/$v.log"; } | cut -c1-300
}
score_variant() {   # $1: variant -> one JSON line per checkpoint in $OUT/score-$1.jsonl
  local v=$1 ck
  : > "$OUT/score-$v.jsonl"
  for ck in "$RUNS/$v"/checkpoints/ckpt-*; do
    [ -d "$ck" ] || continue
    score_base "$ck" "$NUM" | python3 -c "
import json, sys
row = {'variant': '$v', 'step': int('$ck'.rsplit('-', 1)[1])}
for line in sys.stdin:
    line = line.strip()
    if not line.startswith('{'):
        continue
    r = json.loads(line)
    if 'sigma' in r:
        row[f\"denoised@{r['sigma']}\"] = r['denoised']; row[f\"mse@{r['sigma']}\"] = r['mse_x1000']
    else:
        row.update({k: r[k] for k in ('colour', 'shape', 'direction', 'stripes', 'stripes_real', 'size') if k in r})
print(json.dumps(row))" >> "$OUT/score-$v.jsonl"
  done
}
export_all() {   # every checkpoint of the EXPORT_ALL variants -> $OUT/<v>-<step>.safetensors
  local v ck
  for v in ${EXPORT_ALL:-}; do
    for ck in "$RUNS/$v"/checkpoints/ckpt-*; do
      [ -d "$ck" ] && export_to "$ck" "$OUT/$v-$(( 10#${ck##*-} )).safetensors"
    done
  done
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
echo "commit ${HPDM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}; from ${FROM:-scratch}; variants: $VARIANTS; compile $COMPILE"
T0=$SECONDS
for v in $VARIANTS; do overrides "$v" > /dev/null || exit 2; done
for v in $VARIANTS; do train_variant "$v" & done
wait
echo "trained in $((SECONDS - T0)) s"
if [ "${SCORE:-1}" = 0 ]; then
  export_all
  echo "total $((SECONDS - T0)) s (not scored)"
  exit 0
fi
for v in $VARIANTS; do score_variant "$v" & done
wait
echo "scored in $((SECONDS - T0)) s"
# shellcheck disable=SC2086
(cd "$OUT" && cat $(for v in $VARIANTS; do echo "score-$v.jsonl"; done)) > "$OUT/base-variants.jsonl"
python3 - "$OUT/base-variants.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| variant | step | level-0 stripes | colour / shape / direction | denoised stripes at 0.1 / 0.2 / 0.4 | MSE x1000 at 0.1 / 0.2 / 0.4 |")
print("|---|---|---|---|---|---|")
for r in rows:
    pct = " / ".join(f"{100 * r.get(k, float('nan')):.0f}" for k in ("colour", "shape", "direction"))
    den = " / ".join(f"{r.get(f'denoised@{s}', float('nan')):.3f}" for s in (0.1, 0.2, 0.4))
    mse = " / ".join(f"{r.get(f'mse@{s}', float('nan')):.3f}" for s in (0.1, 0.2, 0.4))
    print(f"| {r['variant']} | {r['step']} | {r.get('stripes', float('nan')):.3f} | {pct}% | {den} | {mse} |")
PY
for v in ${EXPORT:-}; do
  export_to "$RUNS/$v" "$OUT/$v.safetensors"
done
export_all
echo "total $((SECONDS - T0)) s"
