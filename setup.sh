#!/usr/bin/env bash
# Creates .venv and installs the project's pinned dependencies into it.
#   bash setup.sh          runtime (train, evaluate, convert)
#   bash setup.sh --dev    runtime + tests (pytest, torch for the parity tests)
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-embedded.txt
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
fi
