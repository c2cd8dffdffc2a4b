"""Files written whole or not at all: a kill, a full disk or a refused command never leaves a
half-written file where the user had a complete one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator, Sequence

from mtbert_jax.errors import ConfigError


def write_text(path: Path, text: str) -> None:
    """Writes `text` to a temporary file beside `path`, flushed to disk, then renames it over
    `path` (atomic on POSIX): readers see the old file or the new one, never a part."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def check_output_directory(out: Path, runs: Sequence[Path] = (), replaceable: bool = False) -> None:
    """The one rule for a command's output directory (evaluate's --out, soup's, convert's): not a
    run's workdir, not inside one of the runs it reads (its files would mix with the run's), and
    new or empty, unless `replaceable` (it holds an earlier output of the same command and inputs,
    which the new one replaces). Refused before any work, in one line."""
    out = Path(out)
    resolved = out.resolve()
    for run in runs:
        if resolved == Path(run).resolve() or resolved.is_relative_to(Path(run).resolve()):
            raise ConfigError(f"--out {out}: inside the run {run}, where its files would mix with the run's; "
                              "nothing was written (give a directory outside the runs)")
    if (out / "checkpoints").is_dir() or (out / "config.json").is_file():
        raise ConfigError(f"--out {out}: a training run's workdir; nothing was written (give a new directory)")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory; nothing was written (give a new directory)")
    if out.exists() and any(out.iterdir()) and not replaceable:
        raise ConfigError(f"--out {out}: exists and is not empty; nothing was written (give a new directory)")


@contextlib.contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """A new directory beside `out` (the same file system, named by this process) in which a
    command writes its whole output before putting it in place (`replace_directory`,
    `move_into`); removed when the block ends, whatever ended it, so that a refused or
    interrupted command leaves `out` as it was."""
    out = Path(out)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)  # a killed process's of the same id
    staging.mkdir(parents=True)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_directory(staging: Path, out: Path) -> None:
    """Renames a finished `staging` directory to `out`, which is absent or empty (as
    check_output_directory requires)."""
    out = Path(out)
    if out.exists():
        out.rmdir()
    os.replace(staging, out)


def move_into(staging: Path, out: Path, own: Sequence[str] = ()) -> None:
    """Moves every file of a finished `staging` directory to the same place under `out`
    (replacing older ones), metrics.json last: a reader sees the new metrics only with the new
    files beside them. In `out`'s subdirectories `own` (the command's alone), files of an earlier
    output that the new one lacks are removed before the new metrics arrive: predictions or plots
    of another checkpoint never sit beside them."""
    staging, out = Path(staging), Path(out)
    files = sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda p: p.name == "metrics.json")
    new = {p.relative_to(staging) for p in files}
    for path in files:
        if path.name == "metrics.json":
            for directory in own:
                for stale in [p for p in (out / directory).rglob("*") if p.is_file()]:
                    if stale.relative_to(out) not in new:
                        stale.unlink()
        target = out / path.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)


def json_lines(text: str) -> list[str]:
    """The complete lines of a JSON-lines file: a last line cut short by a kill mid-append
    (no newline at its end) is left out."""
    lines = text.split("\n")
    complete, last = lines[:-1], lines[-1]
    return [line for line in complete if line.strip()] + ([last] if last.strip() and _parses(last) else [])


def _parses(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False
