"""orbax checkpoints in the work directory: the latest few for resume, the best by dev score.

A checkpoint holds the train state (parameters, optimizer state with PCGrad's key, step, and
when kept SMART's teacher and the weight average), the loader's position and, as JSON, the
config and the run's progress. Saves are synchronous and orbax commits them atomically, so a
run killed at any moment resumes from the last complete one.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from mtbert_jax.errors import CheckpointError, first_line, silenced_after_failure

PyTree = Any


def _manager(directory: Path, keep: int, best: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=False,
        best_fn=(lambda metrics: metrics["score"]) if best else None, best_mode="max")
    return ocp.CheckpointManager(directory.resolve(), options=options)


def assert_finite(tree: PyTree, what: str) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        array = np.asarray(leaf)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise CheckpointError(f"{what}: {jax.tree_util.keystr(path)} holds NaN or inf; not saved")


class Checkpoints:
    def __init__(self, workdir: str | Path, keep: int = 3):
        workdir = Path(workdir)
        self.latest = _manager(workdir / "checkpoints", keep, best=False)
        self.best = _manager(workdir / "best", 1, best=True)

    def save(self, step: int, state: PyTree, meta: dict, score: Optional[float] = None) -> None:
        """Saves to `latest`; with a dev score also to `best` (kept only when it is the best)."""
        assert_finite(state, f"checkpoint at step {step}")
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if step not in self.latest.all_steps():
            self.latest.save(step, args=args)
        if score is not None and math.isfinite(score) and step not in self.best.all_steps():
            self.best.save(step, args=args, metrics={"score": float(score)})

    def latest_step(self) -> Optional[int]:
        return self.latest.latest_step()

    def unreadable(self, step: int) -> Optional[str]:
        """None when the latest-checkpoint at `step` reads completely (state and meta), else why
        not, in one line. Reads it as stored, so that a checkpoint of another model's shape is
        not mistaken for a damaged one, and in a child process: a failed read leaves
        tensorstore's threads printing "Event loop is closed" tracebacks for seconds after."""
        child = subprocess.run([sys.executable, "-m", "mtbert_jax.run.checkpointing",
                                str(self.latest.directory), str(step)], capture_output=True, text=True)
        if child.returncode == 0:
            return None
        lines = [line for line in child.stdout.splitlines() if line.strip()]
        return lines[-1] if lines else f"the check exited with status {child.returncode}"

    def set_aside(self, step: int) -> Path:
        """Moves the checkpoint at `step` out of orbax's sight, for inspection; returns where."""
        source = Path(self.latest.directory) / str(step)
        target = source.parent.parent / "checkpoints-unreadable" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), str(target))
        self.latest.reload()
        return target

    def meta(self, manager: ocp.CheckpointManager, step: int) -> dict:
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def restore(self, manager: ocp.CheckpointManager, step: int, target: PyTree) -> PyTree:
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        return restored.state

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _check_readable(directory: str, step: int) -> int:
    """The child process of `Checkpoints.unreadable`: exit 0 when the checkpoint reads whole,
    else 1 with the reason as the last line of stdout."""
    manager = _manager(Path(directory), keep=1000, best=False)
    try:
        manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001  whatever orbax or tensorstore raise on a damaged file
        print(first_line(e), flush=True)
        os._exit(1)
    os._exit(0)


def restore_trained(workdir: str | Path, which: str = "best") -> tuple[dict, PyTree, int]:
    """(the run's config as a dict, its parameters, the step) from a training workdir: the
    weight average when the run kept one (optimizer.ema_decay), as its dev evaluation used.

    which: "best" (by dev overall score), "latest", or a step number.
    """
    workdir = Path(workdir)
    folder = workdir / ("best" if which == "best" else "checkpoints")
    steps = sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit()) if folder.is_dir() else []
    if not steps:
        raise CheckpointError(f"{folder}: no checkpoint (expected a training workdir with "
                              "checkpoints/ and best/ written by train.py)")
    manager = _manager(folder, keep=len(steps), best=(which == "best"))
    try:
        if which in ("best", "latest"):
            step = (manager.best_step() if which == "best" else None) or manager.latest_step()
        else:
            step = int(which)
            if step not in steps:
                raise CheckpointError(f"{folder}: no checkpoint at step {step}; have {steps}")
        with silenced_after_failure():
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    except (ValueError, OSError, KeyError) as e:
        # Not closed: closing stops orbax's event loop under the reads still in flight after the
        # failure, whose threads then print "Event loop is closed" tracebacks.
        raise CheckpointError(f"{folder}: cannot restore step {step} ({first_line(e, 300)})") from None
    manager.close()
    # Imported here: the readability check runs this module in a child process, which needs no model.
    from mtbert_jax.training.step import TrainState
    return restored.meta["config"], TrainState.from_saved(restored.state["train"]).evaluated, step


if __name__ == "__main__":
    _check_readable(sys.argv[1], int(sys.argv[2]))
