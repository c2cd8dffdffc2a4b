#!/usr/bin/env bash
# The accelerator check on a lent GPU host, in one call from the repository root:
#
#   bash benchmarks/on_device.sh                         # every part, stopped at 8 minutes
#   bash benchmarks/on_device.sh --parts train_step      # any accelerator_check.py options
#
# Needs carry/ beside it (built here by `python benchmarks/carry.py`). The host has its own jax
# with CUDA and no package index: a virtual environment with --system-site-packages keeps them,
# the carried wheels add the pinned flax, optax, orbax-checkpoint, ml-collections and absl-py,
# and of their dependencies only those the host lacks. The float16 MiniLM and the task files
# come from carry/ too. Everything lands in $OUT (default ./accelerator-check-out): check.out
# (one JSON line per part, then the markdown summary), check.md, logs/, setup.log.
# Environment: PYTHON (the host's Python with jax, default python3), OUT, CARRY (default
# ./carry), DEADLINE (seconds for the check, default 480).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/accelerator-check-out}
PYTHON=${PYTHON:-python3}
DEADLINE=${DEADLINE:-480}
CARRY=${CARRY:-$PWD/carry}
WORK=$(mktemp -d)
mkdir -p "$OUT"
SETUP_LOG=$OUT/setup.log
say() { echo "[on_device] $*" | tee -a "$SETUP_LOG" >&2; }

for needed in "$CARRY/wheels" "$CARRY/minilm-float16" "$CARRY/data.tar.gz"; do
  [ -e "$needed" ] || { say "missing $needed: build carry/ with python benchmarks/carry.py and carry it"; exit 2; }
done

# The venv borrows the host's pip (--without-pip: ensurepip may be absent); pip installs into
# the venv. Where no venv can be made, a folder on PYTHONPATH takes the packages instead.
if "$PYTHON" -m venv --system-site-packages --without-pip "$WORK/venv" >>"$SETUP_LOG" 2>&1 \
    && "$WORK/venv/bin/python" -m pip --version >>"$SETUP_LOG" 2>&1; then
  PY=$WORK/venv/bin/python
  TARGET=()
else
  say "no virtual environment: installing into $WORK/site on PYTHONPATH"
  PY=$PYTHON
  TARGET=(--target "$WORK/site")
  export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
fi
PIP=("$PY" -m pip install --no-index --find-links "$CARRY/wheels" --no-deps --disable-pip-version-check "${TARGET[@]}")

# The pins at their exact versions; every other carried wheel only where the host has no
# version of it (the host's own jax, numpy, protobuf... stay as they are).
mapfile -t PINS < <(grep -E '^(flax|optax|orbax-checkpoint|ml-collections|absl-py)==' requirements.txt)
say "installing ${PINS[*]}"
"${PIP[@]}" "${PINS[@]}" >>"$SETUP_LOG" 2>&1 || say "pip could not install the pins (see $SETUP_LOG)"
for wheel in "$CARRY"/wheels/*.whl; do
  name=$(basename "$wheel" | cut -d- -f1)
  case "$name" in flax|optax|orbax_checkpoint|ml_collections|absl_py) continue ;; esac
  if ! "$PY" -m pip show "$name" >/dev/null 2>&1; then
    say "the host lacks $name: installing the carried wheel"
    "${PIP[@]}" "$wheel" >>"$SETUP_LOG" 2>&1 || say "pip could not install $wheel"
  fi
done
"$PY" -m pip check >>"$SETUP_LOG" 2>&1 || say "pip check found unmet requirements (see $SETUP_LOG)"
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee -a "$SETUP_LOG" >&2

mkdir -p "$WORK/data" && tar -xzf "$CARRY/data.tar.gz" -C "$WORK/data"
# The project runs from this checkout, not installed (its pins name jax 0.10; the host has its own).
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

"$PY" benchmarks/accelerator_check.py --checkpoint "$CARRY/minilm-float16" --data-dir "$WORK/data" \
  --deadline "$DEADLINE" --logs "$OUT/logs" --out "$OUT/check.md" "$@" | tee "$OUT/check.out"
status=${PIPESTATUS[0]}
rm -rf "$WORK"
exit "$status"
