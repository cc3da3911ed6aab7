#!/usr/bin/env bash
# Stage the wheels the GPU benchmarks carry (the GPU host has no internet) into a gitignored folder:
# tomli-w (an hpdm runtime dependency the host lacks) and the benchmark-only peers with the
# dependencies the host lacks: rin-pytorch (+ beartype, ema-pytorch), video-diffusion-pytorch
# (+ einops-exts, rotary-embedding-torch), accelerate (present on the GPU host; staged for CPU checks).
# Pure-Python wheels, ~2 MB in all. Then name the folder in the device call's `carry`.
#   bash benchmarks/stage_wheels.sh [DEST]            (DEST defaults to out/gpu/whl)
set -euo pipefail
DEST=${1:-out/gpu/whl}
PY=${PYTHON:-python3}
mkdir -p "$DEST"
"$PY" -m pip download -q --no-deps -d "$DEST" tomli-w==1.2.0 rin-pytorch==0.8.0 beartype==0.23.1 \
  ema-pytorch==0.8.3 video-diffusion-pytorch==0.7.0 einops-exts==0.0.4 rotary-embedding-torch==0.9.1 \
  accelerate==1.15.0
ls -l "$DEST"
du -sh "$DEST"
