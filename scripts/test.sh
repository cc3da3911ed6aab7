#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh), then runs the whole test suite in it. pytest's exit code is the
# script's, so "no tests collected" (exit code 5) fails too.
#   HPDM_SKIP_SETUP=1 bash scripts/test.sh    # .venv is already set up: skip the set-up step
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${HPDM_SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh
.venv/bin/python -m pytest -q tests
