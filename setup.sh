#!/usr/bin/env bash
# Creates .venv, installs the project's pinned dependencies and the project itself (editable).
#   bash setup.sh          runtime (train, evaluate, convert)
#   bash setup.sh --dev    runtime + tests (pytest, torch for the parity tests)
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
pip() { .venv/bin/python -m pip --quiet --disable-pip-version-check "$@"; }
pip install -r requirements.txt
pip install --no-deps -r requirements-embedded.txt
pip install --no-deps -e .  # builds with an isolated setuptools (the venv's may be too old)
if [ "${1:-}" = "--dev" ]; then
  pip install -r requirements-dev.txt
fi
