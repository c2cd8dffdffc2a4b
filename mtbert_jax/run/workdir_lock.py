"""One run per work directory: a lock file naming its holder (host, pid).

Two runs writing one workdir interleave their metrics and race on checkpoints. The lock is a
file created atomically (O_EXCL) holding the holder's host and pid; a second run is refused
with a message naming them. A lock left by a killed run on this host is stale (its pid is gone)
and taken over, which is said; a lock from another host cannot be checked from here, so the
message says how to remove it. In a multi-process run, process 0 holds the lock for all.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from mtbert_jax.errors import ConfigError
from mtbert_jax.run import preemption

LOCK_NAME = ".lock"


class WorkdirBusy(ConfigError):
    """Another live run holds the work directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class WorkdirLock:
    """`with WorkdirLock(workdir, log):` holds the workdir for this process (enabled=False: a
    process other than 0, which holds nothing)."""

    def __init__(self, workdir: str | Path, log=print, enabled: bool = True):
        self.path, self.log, self.enabled, self.held = Path(workdir) / LOCK_NAME, log, enabled, False

    def __enter__(self) -> "WorkdirLock":
        if not self.enabled:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        # The lock is written whole under another name, then linked into place (atomic, and
        # refused when a lock exists): a kill never leaves an empty or half-written lock.
        draft = self.path.with_name(f".{self.path.name}.{me['pid']}")
        draft.write_text(json.dumps(me))
        try:
            return self._take(draft, me)
        finally:
            draft.unlink(missing_ok=True)

    def _take(self, draft: Path, me: dict) -> "WorkdirLock":
        for _ in range(2):  # the second try follows the removal of a stale lock
            try:
                os.link(draft, self.path)
            except FileExistsError:
                holder = self._holder()
                if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
                    self.log(f"{self.path}: taking over the lock of run pid {holder['pid']}, which is gone")
                    self.path.unlink(missing_ok=True)
                    continue
                raise WorkdirBusy(
                    f"{self.path.parent} is in use by another run (host {holder.get('host', '?')}, pid "
                    f"{holder.get('pid', '?')}, since {holder.get('since', '?')}); wait for it, use another "
                    f"--workdir, or delete {self.path} if that run is gone") from None
            self.held = True
            # A process ended at once (a second Ctrl-C, a lost peer) still gives the workdir back.
            self._unregister = preemption.on_hard_exit(lambda: self.path.unlink(missing_ok=True))
            return self
        raise WorkdirBusy(f"{self.path}: could not take the lock")

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}  # being written, or garbled: treated as held by an unknown run

    def __exit__(self, *exc) -> None:
        if self.held:
            self._unregister()
            self.path.unlink(missing_ok=True)
            self.held = False
