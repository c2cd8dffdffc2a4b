"""Files written whole or not at all: a kill, a full disk or a refused command never leaves a
half-written file where the user had a complete one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

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


def move_into(staging: Path, out: Path) -> None:
    """Moves every file of a finished `staging` directory to the same place under `out`
    (replacing older ones), metrics.json last: a reader sees the new metrics only with the new
    files beside them."""
    files = sorted((p for p in Path(staging).rglob("*") if p.is_file()), key=lambda p: p.name == "metrics.json")
    for path in files:
        target = Path(out) / path.relative_to(staging)
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
