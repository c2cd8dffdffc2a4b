"""Files written whole or not at all: a kill, a full disk or a refused command never leaves a
half-written file where the user had a complete one."""

from __future__ import annotations

import json
import os
from pathlib import Path


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
