"""A profiler window: a jax.profiler trace of training steps S .. S+N-1, not of the whole run.

A whole-run trace is too large to open and is dominated by compilation; a few steady steps after
the warm-up are what tells where a step's time goes. The trace goes to WORKDIR/profile:

    WORKDIR/profile/plugins/profile/RUN_TIME/HOST.xplane.pb     xprof / TensorBoard's profile tab
    WORKDIR/profile/plugins/profile/RUN_TIME/perfetto_trace.json.gz    ui.perfetto.dev

Open the first with `pip install xprof && xprof --logdir WORKDIR/profile --port 6006` (or
TensorBoard, with xprof installed, on the same logdir), its Overview and Trace Viewer pages; the
second by dragging it onto https://ui.perfetto.dev (nothing to install; the file stays in the
browser). Each step is a StepTraceAnnotation "train" with its step number, which xprof's step-time
breakdown reads.

    window = ProfileWindow(workdir / "profile", start_step=S, num_steps=N, log=log)
    for ...:
        step = trainer.step + 1                  # the number the step will have once taken
        window.before_step(step)
        with window.annotate(step):
            state, metrics = runner(state, batches, key)
        window.after_step(step, state)           # blocks on `state` at the window's last step only
    window.close()                               # a run that ends (or fails) inside the window

The window adds no synchronisation outside itself: at its last step it waits for that step's
outputs, so the trace holds the step's device work, then stops the trace (the stop writes the
files, seconds on a large trace). A run resumed inside the window traces the window's remaining
steps; one resumed past it traces nothing.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

from mtbert_jax.errors import first_line


class ProfileWindow:
    """Traces steps start_step .. start_step + num_steps - 1 (step numbers as the log counts them,
    from 1) into `logdir`; off when num_steps is 0 or not `enabled` (only one trace may run in a
    process; on one host, give it to one process: the trace files are named by host)."""

    def __init__(self, logdir: Path, start_step: int, num_steps: int, enabled: bool = True,
                 log: Callable[[str], None] = print):
        if num_steps < 0 or (num_steps > 0 and start_step < 1):
            raise ValueError(f"profile window: start_step={start_step} must be >= 1 (steps count from 1) "
                             f"and num_steps={num_steps} >= 0")
        self.logdir, self.start, self.end = Path(logdir), start_step, start_step + num_steps - 1
        self.enabled, self.log = enabled and num_steps > 0, log
        self.tracing, self.done = False, False

    def before_step(self, step: int) -> None:
        """Starts the trace when `step` is the first of the window this process reaches."""
        if not self.enabled or self.tracing or self.done or not self.start <= step <= self.end:
            return
        import jax

        try:
            self.logdir.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.logdir), create_perfetto_trace=True)
        except Exception as e:  # another trace running (jax.profiler's server, a notebook's)
            self.done = True
            self.log(f"profile: starting the trace at step {step} failed ({first_line(e)}); no profile is written")
            return
        self.tracing = True
        self.log(f"profile: tracing steps {step}-{self.end} into {self.logdir}")

    @contextlib.contextmanager
    def annotate(self, step: int) -> Iterator[None]:
        """The step's host work as xprof's step "train" number `step`. Cheap outside a trace, so
        always on: a trace captured from outside (jax.profiler.start_server) gets steps too."""
        import jax

        with jax.profiler.StepTraceAnnotation("train", step_num=step):
            yield

    def after_step(self, step: int, outputs: Any = None) -> None:
        """At the window's last step: waits for `outputs` (the step's results, so that its device
        work is in the trace) and stops the trace."""
        if self.tracing and step >= self.end:
            if outputs is not None:
                import jax

                jax.block_until_ready(outputs)
            self._stop()

    def close(self) -> None:
        """Stops a trace still running (the run ended or failed inside the window)."""
        if self.tracing:
            self._stop()

    def _stop(self) -> None:
        import jax

        self.tracing, self.done = False, True
        try:
            jax.profiler.stop_trace()
        except Exception as e:
            self.log(f"profile: stopping the trace failed ({first_line(e)}); the profile may be missing")
            return
        self.log(f"profile: written to {self.logdir} (xprof --logdir {self.logdir}, or "
                 "perfetto_trace.json.gz on ui.perfetto.dev)")
