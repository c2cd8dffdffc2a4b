"""orbax checkpoints in the work directory: the latest few for resume, the best by dev score.

A checkpoint holds the train state (parameters, optimizer state with PCGrad's key, step, and
when kept SMART's teacher and the weight average), the loader's position and, as JSON, the
config and the run's progress. Saves are synchronous and orbax commits them atomically, so a
run killed at any moment resumes from the last complete one.

A step is saved to best/ before checkpoints/: a run killed between the two resumes from the
checkpoint before, trains that step again to the same state, and finds best/ already holding
it, so best/ never misses a step that checkpoints/ has. Each committed checkpoint gets
DIGEST_FILE, the SHA-256 of every file in it, verified before it is restored: damage that still
decompresses (a flipped byte) is caught like a truncated file.
"""

from __future__ import annotations

import hashlib
import json
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
from mtbert_jax.run import atomic

PyTree = Any
DIGEST_FILE = "digest.json"
DAMAGED = 3  # the readability check's exit status for a checkpoint that does not read
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the folder holding mtbert_jax/


def saved_steps(folder: Path) -> list[int]:
    """The steps of the checkpoints in a checkpoints/ or best/ folder, oldest first."""
    return sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit()) if folder.is_dir() else []


def _save_with_digest(manager: ocp.CheckpointManager, step: int, args, **kwargs) -> None:
    """An orbax save, committed, then its digest."""
    manager.save(step, args=args, **kwargs)
    # By process 0 alone, as orbax commits a checkpoint: the save returns, on every process, only
    # once that commit of all processes' files is done, and a second writer of the digest could
    # hash the first one's temporary file into it.
    if jax.process_index() == 0:
        write_digest(Path(manager.directory) / str(step))


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
        self.workdir = workdir = Path(workdir)
        self.latest = _manager(workdir / "checkpoints", keep, best=False)
        self.best = _manager(workdir / "best", 1, best=True)

    def save(self, step: int, state: PyTree, meta: dict, score: Optional[float] = None) -> None:
        """With a dev score (a new best: the caller knows) to `best`, then to `latest`; each with
        its digest."""
        assert_finite(state, f"checkpoint at step {step}")
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        try:
            # A failed write (a full disk, a folder made read-only) leaves tensorstore's threads
            # printing tracebacks: silenced, and the failure said in one line.
            with silenced_after_failure():
                if score is not None and math.isfinite(score) and step not in self.best.all_steps():
                    _save_with_digest(self.best, step, args, metrics={"score": float(score)})
                if step not in self.latest.all_steps():
                    _save_with_digest(self.latest, step, args)
        except (ValueError, OSError, RuntimeError) as e:
            reason = "no space left on the device" if "RESOURCE_EXHAUSTED" in str(e) or getattr(
                e, "errno", None) == 28 else first_line(e, 300)
            raise CheckpointError(f"{self.workdir}: could not save the checkpoint at step {step} ({reason}); "
                                  "the checkpoints already there are intact, and a restart resumes from the "
                                  "newest") from None

    def best_step(self) -> Optional[int]:
        return self.best.best_step()

    def copy_to_best(self, step: int, score: float) -> None:
        """best/ from the latest-checkpoint at `step`, as saved (repairing a best/ that a run
        killed between its two saves never got)."""
        restored = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
        args = ocp.args.Composite(state=ocp.args.StandardSave(restored.state), meta=ocp.args.JsonSave(restored.meta))
        _save_with_digest(self.best, step, args, metrics={"score": float(score)}, force=True)

    def latest_step(self) -> Optional[int]:
        return self.latest.latest_step()

    def unreadable(self, step: int) -> Optional[str]:
        """None when the latest-checkpoint at `step` reads completely (state and meta), else why
        not, in one line. Reads it as stored, so that a checkpoint of another model's shape is
        not mistaken for a damaged one, and in a child process: a failed read leaves
        tensorstore's threads printing "Event loop is closed" tracebacks for seconds after."""
        changed = digest_mismatch(Path(self.latest.directory) / str(step))
        if changed:
            return changed
        # -I: no current directory, PYTHONPATH or user site on the path, so that a file such as
        # numpy.py where the user stands is never run; then this project's own folder.
        code = (f"import sys; sys.path.insert(0, {str(PROJECT_ROOT)!r}); "
                "from mtbert_jax.run.checkpointing import check_readable; "
                f"check_readable({str(self.latest.directory)!r}, {step})")
        child = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
        if child.returncode == 0:
            return None
        lines = [line for line in child.stdout.splitlines() if line.strip()]
        if child.returncode == DAMAGED:
            return lines[-1] if lines else "it does not read"
        problem = [line for line in child.stderr.splitlines() if line.strip()]
        raise CheckpointError(f"could not check the checkpoint at step {step} for damage: the check itself failed "
                              f"(exit status {child.returncode}: {problem[-1] if problem else 'no message'})")

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


def check_readable(directory: str, step: int) -> int:
    """The child process of `Checkpoints.unreadable`: exit 0 when the checkpoint reads whole,
    else DAMAGED with the reason as the last line of stdout."""
    manager = _manager(Path(directory), keep=1000, best=False)
    try:
        manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001  whatever orbax or tensorstore raise on a damaged file
        print(first_line(e), flush=True)
        os._exit(DAMAGED)
    os._exit(0)


def _file_digests(folder: Path) -> dict[str, str]:
    """{path relative to `folder`: SHA-256} of every file in it but the digest itself."""
    digests = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != DIGEST_FILE):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digests[str(path.relative_to(folder))] = h.hexdigest()
    return digests


def write_digest(folder: Path) -> None:
    """Records the committed checkpoint's file digests (written whole, then renamed into place)."""
    atomic.write_text(folder / DIGEST_FILE, json.dumps(_file_digests(folder), indent=0))


def digest_mismatch(folder: Path) -> Optional[str]:
    """None when the checkpoint's files are those its digest recorded (or it has no digest,
    as checkpoints saved before digests existed), else which file differs, in one line."""
    try:
        recorded = json.loads((folder / DIGEST_FILE).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return f"{folder / DIGEST_FILE} is not readable JSON"
    found = _file_digests(folder)
    for name, digest in recorded.items():
        if name not in found:
            return f"{folder / name} is missing"
        if found[name] != digest:
            return f"{folder / name} changed since it was saved (SHA-256 differs)"
    return None


def restore_saved(workdir: str | Path, which: str = "best") -> tuple[dict, dict, int]:
    """(the checkpoint's meta, its whole saved state as written, the step) from a training
    workdir; which: "best" (by dev overall score), "latest", or a step number."""
    workdir, which = Path(workdir), str(which)
    folder = workdir / ("best" if which == "best" else "checkpoints")
    steps = saved_steps(folder)
    if not steps:
        raise CheckpointError(f"{folder}: no checkpoint (expected a training workdir with "
                              "checkpoints/ and best/ written by train.py)")
    if which not in ("best", "latest") and not which.isdigit():
        raise CheckpointError(f"checkpoint {which!r}: expected best, latest or a step number ({steps})")
    if which.isdigit() and int(which) not in steps:
        raise CheckpointError(f"{folder}: no checkpoint at step {which}; have {steps}")
    manager = _manager(folder, keep=len(steps), best=(which == "best"))
    if which in ("best", "latest"):
        step = (manager.best_step() if which == "best" else None) or manager.latest_step()
    else:
        step = int(which)
    changed = digest_mismatch(folder / str(step))
    if changed:
        raise CheckpointError(f"{folder}: the checkpoint at step {step} is damaged: {changed}")
    try:
        with silenced_after_failure():
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    except (ValueError, OSError, KeyError) as e:
        # Not closed: closing stops orbax's event loop under the reads still in flight after the
        # failure, whose threads then print "Event loop is closed" tracebacks.
        raise CheckpointError(f"{folder}: cannot restore step {step} ({first_line(e, 300)})") from None
    manager.close()
    return restored.meta, restored.state, step


def restore_trained(workdir: str | Path, which: str = "best") -> tuple[dict, PyTree, int]:
    """(the run's config as a dict, its parameters, the step) from a training workdir: the
    weight average when the run kept one (optimizer.ema_decay), as its dev evaluation used.

    which: "best" (by dev overall score), "latest", or a step number.
    """
    meta, state, step = restore_saved(workdir, which)
    # Imported here: the readability check runs this module in a child process, which needs no model.
    from mtbert_jax.training.step import TrainState
    return meta["config"], TrainState.from_saved(state["train"]).evaluated, step
