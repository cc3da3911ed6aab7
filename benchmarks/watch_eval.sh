#!/usr/bin/env bash
# A learning curve of prompt faithfulness in the same GPU call as the training: evaluate every new
# checkpoint of a run while it trains (`hpdm eval --no-fvd` on a copy of its EMA weights, so pruning
# cannot pull it away), until the training process PID has exited and every checkpoint is done.
# Reports go to OUT_DIR/step-NNNNNNNN/; the last lines are one row per step.
#   bash benchmarks/watch_eval.sh RUN_DIR OUT_DIR PID --num-clips 128 --batch 64 --bf16
# benchmarks/gpu_shapes_quality.sh starts one per variant when WATCH holds the eval options.
set -uo pipefail
run=$1; out=$2; pid=$3; shift 3
mkdir -p "$out"
while :; do
  alive=0; kill -0 "$pid" 2>/dev/null && alive=1
  for ck in "$run"/checkpoints/ckpt-*; do
    [ -d "$ck" ] || continue
    dst="$out/step-${ck##*ckpt-}"
    [ -e "$dst" ] && continue
    mkdir -p "$dst"
    cp "$ck/ema.safetensors" "$dst/weights.safetensors" 2>/dev/null || cp "$ck/model.safetensors" \
      "$dst/weights.safetensors" 2>/dev/null || { echo "checkpoint gone before it was read" > "$dst/log.txt"; continue; }
    cp "$run/prompt_embeddings.safetensors" "$dst/" 2>/dev/null
    python3 -m hpdm_cli eval --ckpt "$dst/weights.safetensors" --out "$dst" --no-fvd "$@" > "$dst/log.txt" 2>&1
    rm -f "$dst/weights.safetensors" "$dst/prompt_embeddings.safetensors"   # keep the results small
  done
  [ "$alive" = 1 ] || break
  sleep 5
done
python3 - "$out" <<'PY'
import json, pathlib, sys
rows = []
for d in sorted(pathlib.Path(sys.argv[1]).glob("step-*")):
    try:
        r = json.loads((d / "report.json").read_text())
    except (OSError, ValueError):
        print(f"{d.name}: no report (see {d / 'log.txt'})")
        continue
    g = r["faithfulness"]["generated"]
    l0 = r.get("levels", {}).get("level0_generated", {})
    rows.append(f"{int(d.name[5:]):>7} {g['colour']:7.1%} {g['shape']:7.1%} {g['direction']:7.1%}   "
                + (f"{l0['colour']:7.1%} {l0['shape']:7.1%} {l0['direction']:7.1%}" if l0 else "(one level)"))
print("   step  colour   shape    dir.    level 0 alone: colour shape dir.")
print("\n".join(rows))
PY
