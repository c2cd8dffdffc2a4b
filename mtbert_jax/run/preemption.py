"""Signals, from a command's first second to its last: one handler for SIGTERM, SIGUSR1 and
SIGINT (Ctrl-C), installed by `install` before anything loads.

Two modes:
- immediate (loading, tokenizing, compiling, evaluating, exporting): the first signal raises
  `Interrupted` where the main thread is, so `finally` blocks and context managers undo what
  was half done (partial files removed, the workdir lock released); the command then ends in
  one line (mtbert_jax/run/command.py);
- deferred (inside train.py's loop, `with StopSignals() as stop`): the signal only sets a flag;
  the loop finishes the step or evaluation in flight, saves a checkpoint with the loader's
  position, and raises `Preempted`: one line, and the same command resumes exactly.

SLURM sends SIGTERM before a time limit or a preemption (or the signal `--signal` names, e.g.
USR1@120), Kubernetes SIGTERM before evicting a pod, a preemptible TPU VM about 30 seconds
before it stops. A second SIGTERM or SIGUSR1 changes nothing (the save completes); a second
Ctrl-C ends the process at once, in one line (what a person pressing it twice means).

In a multi-process job only some processes may get the signal; every process must stop after
the same step, and only then save. The flag is all-gathered every SYNC_EVERY steps (and at each
epoch's end), so all processes see it at the same step.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable, Optional

from mtbert_jax import errors

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# EX_TEMPFAIL (sysexits.h): a temporary failure, to be retried; SLURM --requeue and Kubernetes
# restart policies take any non-zero status, and this one tells a person what happened.
PREEMPTED_EXIT_STATUS = 75
INTERRUPTED_EXIT_STATUS = 128 + signal.SIGINT  # Ctrl-C, as shells report it
SYNC_EVERY = 10  # steps between the processes' agreements in a multi-process job


def exit_status(signal_name: str, resumable: bool) -> int:
    """Ctrl-C: 130. SIGTERM/SIGUSR1: 75 where the same command resumes or starts again (train.py),
    else the shell's 128 + the signal's number."""
    if signal_name == "SIGINT":
        return INTERRUPTED_EXIT_STATUS
    return PREEMPTED_EXIT_STATUS if resumable else 128 + signal.Signals[signal_name].value


class Interrupted(BaseException):
    """A signal arrived outside a training loop. A BaseException, as KeyboardInterrupt is: no
    `except Exception` on the way may swallow it."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class Preempted(Exception):
    """The run stopped on a signal after saving a checkpoint at `step`."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(f"stopped by {signal_name} after step {step}: checkpoint saved; "
                         "the same command resumes from it")
        self.step, self.signal_name = step, signal_name


class _Handler:
    """The process's one handler and its state."""

    def __init__(self):
        self.installed = False
        self.deferred = False  # inside a training loop that saves before stopping
        self.received: Optional[str] = None
        self.at_hard_exit: list[Callable[[], None]] = []  # undone even by a second Ctrl-C (the lock)

    def __call__(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:  # a second signal: the first is being acted on
            if signum == signal.SIGINT:
                hard_exit(f"{name} again: stopped at once, nothing saved since the last checkpoint",
                          INTERRUPTED_EXIT_STATUS)
            return
        self.received = name
        if not self.deferred:
            raise Interrupted(name)


_handler = _Handler()


def install() -> None:
    """Catches STOP_SIGNALS for the rest of the process (a command line's first act). Called
    again after jax.distributed.initialize, whose preemption notifier replaces the SIGTERM
    handler at the C level (Python's own record of it does not change)."""
    if threading.current_thread() is not threading.main_thread():  # Python handles signals there only
        return
    for sig in STOP_SIGNALS:
        signal.signal(sig, _handler)
    _handler.installed = True


def is_installed() -> bool:
    """Whether this process catches STOP_SIGNALS for good (a command line)."""
    return _handler.installed


def on_hard_exit(undo: Callable[[], None]) -> Callable[[], None]:
    """Registers what must be undone even when a second Ctrl-C ends the process at once;
    returns a function that unregisters it."""
    _handler.at_hard_exit.append(undo)
    return lambda: _handler.at_hard_exit.remove(undo) if undo in _handler.at_hard_exit else None


def hard_exit(message: str, status: int) -> None:
    """Ends the process now with `error: message` on stderr (no interpreter shutdown, no
    traceback), after the undo hooks (`on_hard_exit`: a workdir's lock)."""
    for undo in list(_handler.at_hard_exit):
        try:
            undo()
        except OSError:
            pass  # best effort: the process is ending
    errors.exit_on_error(message, status, fresh_line=True)


class StopSignals:
    """`with StopSignals() as stop:` defers STOP_SIGNALS for the block (a training loop that saves
    before stopping); `stop.agreed(step)` says, the same on every process, whether to stop.
    Outside a command line (tests, notebooks) it installs the handler for the block only."""

    def __init__(self):
        self._previous: dict = {}

    @property
    def received(self) -> Optional[str]:
        return _handler.received

    def __enter__(self) -> "StopSignals":
        if not _handler.installed and threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
            install()
        _handler.deferred = True
        return self

    def __exit__(self, *exc) -> None:
        _handler.deferred = False
        if self._previous:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)
            _handler.installed, self._previous = False, {}
        _handler.received = None if exc[0] is None else _handler.received

    def agreed(self, step: int, now: bool = False) -> Optional[str]:
        """The signal's name when the run is to stop after `step`, else None. One process: as
        soon as a signal came. Several: every SYNC_EVERY steps (or `now`, which every process
        must ask at the same point), when any process got one."""
        import jax  # here, not at the top: the handler is installed before jax is imported
        import numpy as np

        if jax.process_count() == 1:
            return self.received
        if not now and step % SYNC_EVERY:
            return None
        from jax.experimental import multihost_utils

        names = [s.name for s in STOP_SIGNALS]
        mine = np.int32(names.index(self.received) + 1 if self.received else 0)
        anyone = int(np.max(multihost_utils.process_allgather(mine)))
        return names[anyone - 1] if anyone else None
