"""Files written whole or not at all: a kill, a full disk or a refused command never leaves a
half-written file where the user had a complete one."""

from __future__ import annotations

import json
import os
from pathlib import Path

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


def check_new_directory(out: Path) -> None:
    """An output directory that exists must be empty: a command never writes over files (a run's
    own config.json among them)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not empty; nothing was written (give a new directory)")


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
