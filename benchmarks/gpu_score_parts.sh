#!/usr/bin/env bash
# One GPU call of an FVD sweep that may need several: benchmarks/guidance_sweep.py in chunks, each kept in
# $OUT/parts as soon as it is scored, the chunks of earlier calls skipped.
#   MODEL     the weights (or run) to score, e.g. out/grown2.safetensors (carry it)
#   SETTINGS  guidance_sweep.py settings, space-separated (default: the recipe's sampling, autoguided)
#   NUM       clips per side (256); CHUNK clips per part (128); BATCH clips per sampler call (256)
#   PARTS_IN  the parts earlier calls returned (carry the folder; default none): copied into $OUT/parts,
#             skipped by the sweep, then removed from $OUT again, since at most 8 files come back; its
#             real-n<NUM>.npz (the real clips' features and readings) is used as it is, not measured again
#   SWEEP_FLAGS  guidance_sweep.py's other flags (default --bf16); parts whose real side stays here (its
#             real-n<N>.npz, for --merge): "--bf16 --no-real", e.g. "--bf16 --rows 896:1024 --no-real" (a cold
#             call at N = 1024 spent ~125 s on the real side, and real-n1024.npz does not fit beside the I3D
#             pack in what travels)
#   SECONDS_MAX  the sweep's own time limit (575), so that the clean-up runs before the call's limit (600 s);
#             the sweep starts no part that the time left cannot hold (--stop-after: a 128-clip part of the
#             32×128² model takes ~168 s on an H100, and a call ~35 s before its first clip, so 575 s hold three)
#   I3D / I3D_PACK  the I3D file, or its pack (out/i3dp/i3d.pack, 43 MB) unpacked to $I3D when missing
#                   (a warm machine keeps /tmp between calls: carry the pack only to a cold one)
# The lean checkout it needs: `git ls-files 'docs/results/*.png' | xargs rm; rm hpdm_cli/assets/shapes-t2v.safetensors`
# (restored by `git checkout -- docs/results hpdm_cli/assets`) when the model is not the packaged one,
# carrying out/gpu/whl-min, out/gpu/shapes_prompts_heldout.safetensors, the pack and MODEL, e.g.
#   export WHL=out/gpu/whl-min; MODEL=out/grown2.safetensors PARTS_IN=out/parts bash benchmarks/gpu_score_parts.sh
# then unpack the returned parts next to the earlier ones here (`cat FILES_AT/parts.tar* | tar -xf - -C DIR`:
# they come back as one tar, since a call returns at most 8 files); when every setting covers all NUM rows the
# call prints the FVD itself, and `python benchmarks/guidance_sweep.py --merge DIR --bootstrap 200` scores them
# here on any machine. A CPU check (float32: SWEEP_FLAGS= drops the default --bf16):
#   WHL=out/gpu/whl-min MODEL=hpdm_cli/assets/shapes-t2v.safetensors NUM=2 CHUNK=1 BATCH=1 SETTINGS=1/2,2,2/none
#   SWEEP_FLAGS= I3D=out/gpu/i3d-kinetics-400.ckpt DEVICE=cpu OUT=/tmp/score PATH=.venv/bin:$PATH bash benchmarks/gpu_score_parts.sh
set -uo pipefail
OUT=${OUT:-out/result}; mkdir -p "$OUT/parts"
source benchmarks/gpu_env.sh
: "${MODEL:?set MODEL to the weights to score}"
I3D=${I3D:-/tmp/i3d.ckpt}
SETTINGS=${SETTINGS:-1.5,1,1,1/32,48,24,24/shift-fhw///packaged}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
echo "commit ${HPDM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}; model $MODEL"
PACK=${I3D_PACK:-out/i3dp/i3d.pack}
if [ ! -f "$I3D" ] && [ -f "$PACK" ]; then python3 benchmarks/pickle_pack.py unpack "$PACK" "$I3D"; fi
[ -f "$I3D" ] || { echo "no I3D weights at $I3D: carry out/i3dp/i3d.pack (or set I3D)"; exit 2; }
given=()
if [ -n "${PARTS_IN:-}" ]; then
  for f in "$PARTS_IN"/part-*.npz; do
    [ -f "$f" ] || continue
    cp "$f" "$OUT/parts/" && given+=("$OUT/parts/$(basename "$f")")
  done
  for f in "$PARTS_IN"/real-n*.npz; do                 # the real side given: used, not sent back
    [ -f "$f" ] && cp "$f" "$OUT/parts/" && given+=("$OUT/parts/$(basename "$f")")
  done
  echo "${#given[@]} part(s) given"
fi
read -r -a settings <<< "$SETTINGS"
T0=$SECONDS
# shellcheck disable=SC2086
timeout --preserve-status -s TERM "${SECONDS_MAX:-575}" python3 benchmarks/guidance_sweep.py "$MODEL" \
  --num "${NUM:-256}" --batch "${BATCH:-256}" --chunk "${CHUNK:-128}" --save "$OUT/parts" --settings "${settings[@]}" \
  --stop-after "$(( ${SECONDS_MAX:-575} - 10 ))" \
  --i3d-weights "$I3D" --tables out/gpu/shapes_prompts_heldout.safetensors --sheets "$OUT/sheets" \
  --device "${DEVICE:-auto}" ${SWEEP_FLAGS---bf16}
echo "[sweep] exit $? after $((SECONDS - T0)) s"
[ "${#given[@]}" -eq 0 ] || rm -f "${given[@]}"
ls "$OUT/parts"
# At most 8 files come back from a call (this log and the contact sheets among them): the new parts (and a
# measured real side) travel as one tar, split into 15-MiB pieces when larger.
if [ -n "$(ls -A "$OUT/parts")" ]; then
  (cd "$OUT/parts" && tar -cf ../parts.tar -- *) && rm -rf "$OUT/parts"
  if [ "$(stat -c %s "$OUT/parts.tar")" -gt $((15 * 1048576)) ]; then
    split -b 15M -d "$OUT/parts.tar" "$OUT/parts.tar." && rm "$OUT/parts.tar"
  fi
  echo "parts packed: cat $OUT/parts.tar* | tar -xf - -C DIR"
fi
