#!/usr/bin/env bash
# One GPU call (nvidia-h200, < 10 minutes): benchmarks/stripe_toy.py over several seeds and settings at
# once on one card, each run one process with its data drawn on the GPU (OMP_NUM_THREADS=1: six runs
# share 16 host cores), then one line per run: the R^2 curve and where it left the linear filter's
# plateau (the first score above PLATEAU, default 0.35). docs/results.md, section 12, says why.
#   run(command="bash benchmarks/gpu_stripe_toy.sh", timeout_s=600)
# SEEDS (default "0 1 2"), CONFIGS (";"-separated stripe_toy arguments; default: the shapes base
# level's regime and the same with 3x larger stripes), COMMON (arguments of every run), RUN_S (each
# run's limit, default 480 s: the curve so far is kept when it is reached). At ~20 steps/s per run
# when six share the card, 8000 steps of 64 take ~7 minutes.
# TINY=1: 20 steps of each run on the CPU, a check of the script itself.
set -uo pipefail
OUT=${OUT:-out/stripe-toy}; mkdir -p "$OUT"
SEEDS=${SEEDS:-0 1 2}
CONFIGS=${CONFIGS:-"--edm --sigma-data 0.5 --amp 0.07 --sigma 0.14;--edm --sigma-data 0.5 --amp 0.21 --sigma 0.42"}
COMMON=${COMMON:---variants plain --lr 1e-3 --steps 8000 --batch 64 --evals 16}
DEVICE=cuda; RUN_S=${RUN_S:-480}
if [ -n "${TINY:-}" ]; then DEVICE=cpu; COMMON="$COMMON --steps 20"; RUN_S=120; fi
export OMP_NUM_THREADS=1
: > "$OUT/runs.txt"
IFS=';' read -r -a CFG <<< "$CONFIGS"
i=0
for c in "${CFG[@]}"; do
  for s in $SEEDS; do
    # shellcheck disable=SC2086  # the settings are word lists on purpose
    timeout "$RUN_S" python3 benchmarks/stripe_toy.py --device "$DEVICE" $COMMON $c --seed "$s" \
      > "$OUT/run-$i-seed$s.log" 2>&1 &
    echo "run $i seed $s: $c" >> "$OUT/runs.txt"
  done
  i=$((i + 1))
done
wait
PLATEAU=${PLATEAU:-0.35} python3 - "$OUT" <<'EOF'
import json, os, sys
from pathlib import Path
out, cut = Path(sys.argv[1]), float(os.environ["PLATEAU"])
for line in (out / "runs.txt").read_text().splitlines():
    head, args = line.split(": ", 1)
    _, i, _, seed = head.split()
    curve = []
    for rec in (out / f"run-{i}-seed{seed}.log").read_text().splitlines():
        if rec.startswith("{") and ("RIN" in rec or "MLP" in rec):
            r = json.loads(rec)
            curve.append((r.get("step", "end"), r["r2"]))
    left = next((st for st, r2 in curve if r2 > cut), None)
    pts = " ".join(f"{st}:{r2:.3f}" for st, r2 in curve) or "(no score)"
    print(f"{args} seed {seed}: left the plateau at {left if left is not None else '-'}; {pts}")
EOF
