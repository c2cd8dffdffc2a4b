"""One error hierarchy: everything the user can fix is an MtbertError, and every command line
prints its message on one line and exits with status 2 (mtbert_jax/run/command.py)."""

from __future__ import annotations

import contextlib


class MtbertError(Exception):
    """A problem the user can fix; the message names the file, field or key and what was expected."""


class ConfigError(MtbertError, ValueError):
    """A configuration value is unknown, out of range or inconsistent with another."""


class DataError(MtbertError, ValueError):
    """A task file cannot be read; the message names the file, line and field."""


class CheckpointError(MtbertError, ValueError):
    """A checkpoint (Hugging Face directory or training workdir) cannot be read or does not fit."""


class TrainingError(MtbertError, RuntimeError):
    """The run cannot go on (a NaN loss, an impossible combination found while running)."""


_command_line = False  # set by the command lines (mark_command_line)
_error_fd: int | None = None  # stderr, kept aside once everything else is silenced


def user_message(error: BaseException) -> str:
    """The one line a command prints for an error it refuses with: the project's own message, or
    for an operating-system error the file and what went wrong (a read-only folder, a full disk,
    no permission)."""
    if isinstance(error, OSError) and not isinstance(error, MtbertError):
        where = error.filename if error.filename is not None else "a file"
        return f"{where}: {error.strerror or first_line(error)}"
    return str(error)


def first_line(error: BaseException, limit: int = 200) -> str:
    """`Kind: the first line of its message`, for one-line reports of library errors."""
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:limit]}"


def _to_devnull() -> tuple[int, int]:
    """Points stdout and stderr at /dev/null; returns copies of the originals."""
    import os
    import sys

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    kept = (os.dup(1), os.dup(2))
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    return kept


@contextlib.contextmanager
def silenced_after_failure():
    """Around an orbax restore: in a command line, its stdout and stderr go to /dev/null while it
    runs and, when it fails, stay there until the one error line. A failed restore leaves
    tensorstore's threads posting to orbax's closed asyncio loop, and each prints an "Event loop
    is closed" traceback (up to hundreds of lines), some before the failure reaches us."""
    global _error_fd
    import os
    import sys

    if not _command_line or _error_fd is not None:
        yield
        return
    kept = _to_devnull()
    _error_fd = kept[1]  # an exit meanwhile (a second Ctrl-C, a lost peer) still says its line
    yield  # a failure leaves the output silenced for good: exit_on_error writes to _error_fd
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    _error_fd = None
    for fd, original in zip((1, 2), kept):
        os.dup2(original, fd)
        os.close(original)


def exit_on_error(message: str, status: int = 2, fresh_line: bool = False) -> None:
    """Writes `error: message` as the one line a user sees and ends the process with `status`
    at once (no interpreter shutdown, during which those threads print as well). The line goes
    to the user's stderr even while an orbax restore has it silenced. `fresh_line`: start it
    on a new line (a progress bar may be mid-line)."""
    global _error_fd
    import os

    if _error_fd is None:
        _error_fd = _to_devnull()[1]
    start = "\n" if fresh_line else ""
    os.write(_error_fd, f"{start}error: {message}\n".encode())
    os._exit(status)


def is_command_line() -> bool:
    """Whether a command line (train.py, evaluate.py, compare.py, convert.py) runs this process."""
    return _command_line


def mark_command_line() -> None:
    """Marks this process as a command line: failed orbax operations silence its output until
    the one error line (see silenced_after_failure)."""
    global _command_line
    _command_line = True
