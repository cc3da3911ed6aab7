#!/usr/bin/env bash
# Installs hpdm with its test dependencies, then runs the whole test suite (exit code 5, "no tests", fails).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m pytest -q tests
