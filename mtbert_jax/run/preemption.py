"""Preemption: SIGTERM or SIGUSR1 asks a run to stop; it finishes the step (or the evaluation) in
flight, saves a checkpoint with the loader's position, says so in one line and exits with
PREEMPTED_EXIT_STATUS; the same command resumes exactly.

SLURM sends SIGTERM before a time limit or a preemption (or the signal `--signal` names, e.g.
USR1@120), Kubernetes SIGTERM before evicting a pod, a preemptible TPU VM about 30 seconds
before it stops. A second signal while saving only sets the same flag: the save completes.

In a multi-process job only some processes may get the signal; every process must stop after
the same step, and only then save. The flag is all-gathered every SYNC_EVERY steps (and at each
epoch's end), so all processes see it at the same step.
"""

from __future__ import annotations

import signal
import threading
from typing import Optional

import jax
import numpy as np

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# EX_TEMPFAIL (sysexits.h): a temporary failure, to be retried; SLURM --requeue and Kubernetes
# restart policies take any non-zero status, and this one tells a person what happened.
PREEMPTED_EXIT_STATUS = 75
SYNC_EVERY = 10  # steps between the processes' agreements in a multi-process job


class Preempted(Exception):
    """The run stopped on a signal after saving a checkpoint at `step`."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(f"stopped by {signal_name} after step {step}: checkpoint saved; "
                         "the same command resumes from it")
        self.step, self.signal_name = step, signal_name


class StopSignals:
    """`with StopSignals() as stop:` catches STOP_SIGNALS for the block (the previous handlers
    come back after it); `stop.agreed(step)` says, the same on every process, whether to stop."""

    def __init__(self):
        self.received: Optional[str] = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # Python handles signals there only
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.received = self.received or signal.Signals(signum).name

    def agreed(self, step: int, now: bool = False) -> Optional[str]:
        """The signal's name when the run is to stop after `step`, else None. One process: as
        soon as a signal came. Several: every SYNC_EVERY steps (or `now`, which every process
        must ask at the same point), when any process got one."""
        if jax.process_count() == 1:
            return self.received
        if not now and step % SYNC_EVERY:
            return None
        from jax.experimental import multihost_utils

        names = [s.name for s in STOP_SIGNALS]
        mine = np.int32(names.index(self.received) + 1 if self.received else 0)
        anyone = int(np.max(multihost_utils.process_allgather(mine)))
        return names[anyone - 1] if anyone else None
