"""What a run logs: metrics.jsonl in the workdir (each record passed on to the run's trackers:
TensorBoard, W&B), and the per-step numbers averaged over each logging window."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from mtbert_jax.run import atomic

# A record's measurements of the machine (time, memory): the only fields in which a resumed
# run's log may differ from an uninterrupted one's.
MEASURED_FIELDS = ("run_seconds", "examples_per_second", "step_seconds", "tokens_per_second", "model_tflops",
                   "mfu", "peak_host_mib", "peak_device_mib")


def peak_host_mib() -> float:
    """This process's peak resident memory so far, in MiB (getrusage's high-water mark)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def peak_memory_mib() -> dict[str, float]:
    """This process's peak memory so far, in MiB: `peak_host_mib`, the resident set's
    high-water mark (getrusage; on a CPU backend the model's memory too), and on an accelerator
    `peak_device_mib`, the largest peak among this process's devices (as the runtime reports it;
    a CPU backend reports none)."""
    peaks = {"peak_host_mib": round(peak_host_mib(), 1)}
    import jax

    device_peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
    if any(peak is not None for peak in device_peaks):
        peaks["peak_device_mib"] = round(max(p for p in device_peaks if p is not None) / 2**20, 1)
    return peaks


class MetricsLog:
    """JSON lines, one record per logging step and per dev evaluation; on resume, records past
    the restored step are dropped, so the log reads as an uninterrupted run's.

    Each record has `run_seconds`: the wall-clock time of the run up to it, from `started` (the
    process's start) plus the time the run's earlier processes logged (what a killed process did
    after its last kept record is not counted)."""

    def __init__(self, path: Path, resume_step: int, enabled: bool, started: float | None = None, trackers=None):
        self.path, self.enabled = path, enabled
        self.started, self.earlier_seconds = time.perf_counter() if started is None else started, 0.0
        if enabled and path.exists():
            kept = [line for line in atomic.json_lines(path.read_text())
                    if json.loads(line).get("step", 0) <= resume_step]
            atomic.write_text(path, "".join(line + "\n" for line in kept))
            self.earlier_seconds = max([json.loads(line).get("run_seconds", 0.0) for line in kept] + [0.0])
        self.trackers = trackers  # TensorBoard, W&B (run/trackers.py): each record goes to them too

    def records(self) -> list[dict]:
        """The records kept so far (those up to the step resumed from, and those since)."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in atomic.json_lines(self.path.read_text())]

    def run_seconds(self) -> float:
        """The run's wall-clock time so far: this process's and its earlier processes' (as logged)."""
        return self.earlier_seconds + time.perf_counter() - self.started

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {**record, "run_seconds": round(self.run_seconds(), 3)}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.trackers is not None:
            self.trackers.log(record, record["step"])

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()


class LogWindow:
    """Losses and examples since the last log line; `record` averages them and starts anew."""

    def __init__(self):
        self.examples, self.losses, self.start = 0.0, {}, time.perf_counter()
        self.steps, self.tokens, self.flops, self.paused = 0, 0.0, 0.0, 0.0

    def add_step(self, examples: float, tokens: float = 0.0, flops: float = 0.0) -> None:
        """A step taken: its examples, real tokens and model FLOPs (all processes')."""
        self.steps += 1
        self.examples += examples
        self.tokens += tokens
        self.flops += flops

    def pause(self, seconds: float) -> None:
        """Time spent inside the window on something else than steps (a checkpoint's save)."""
        self.paused += seconds

    def state(self) -> dict:
        """What a checkpoint keeps of the window (JSON): the losses so far. Not the examples: a
        resumed window's examples/s counts what this process trained in the time it took."""
        return {"losses": {t: list(v) for t, v in self.losses.items()}}

    @classmethod
    def from_state(cls, state: dict | None) -> "LogWindow":
        window = cls()
        if state:
            window.losses = {t: [float(x) for x in v] for t, v in state["losses"].items()}
        return window

    def add_losses(self, losses: Mapping[str, float]) -> None:
        for task, value in losses.items():
            self.losses.setdefault(task, []).append(value)

    def record(self, step: int, epoch: int, metrics: Mapping, padding_efficiency: float) -> dict:
        """The log record of this window; `metrics` are the last step's (host values).

        The window's time runs from the end of the last record's fetch to the end of this one's:
        the host waits for the devices only there, so it covers exactly the steps between (no
        sync is added to measure it); saves inside the window are taken out (`pause`). The first
        window of a process includes compilation."""
        elapsed = max(time.perf_counter() - self.start - self.paused, 1e-9)
        record = {"step": step, "epoch": epoch,
                  "loss": {t: float(np.mean(v)) for t, v in sorted(self.losses.items())},
                  "examples_per_second": self.examples / elapsed,
                  "step_seconds": elapsed / max(self.steps, 1),
                  "tokens_per_second": self.tokens / elapsed,
                  "model_tflops": self.flops / elapsed / 1e12,
                  "grad_norm": np.asarray(metrics["grad_norm"]).tolist(),
                  "lr": {k.split("/", 1)[1]: float(v) for k, v in sorted(metrics.items()) if k.startswith("lr/")},
                  "param_norm": float(metrics["param_norm"]), "update_norm": float(metrics["update_norm"]),
                  "padding_efficiency": padding_efficiency, **peak_memory_mib()}
        if "pcgrad_conflicts" in metrics:
            record["pcgrad_conflicts"] = int(metrics["pcgrad_conflicts"])
            record["pcgrad_cosines"] = np.asarray(metrics["pcgrad_cosines"]).round(4).tolist()
        if "gse/loss" in metrics:  # GSE's second forward: each task's loss after the first update
            record["gse"] = {"loss": {t: float(v) for t, v in sorted(metrics["gse/loss"].items())},
                             "grad_norm": np.asarray(metrics["gse/grad_norm"]).tolist(),
                             "update_norm": float(metrics["gse/update_norm"])}
        self.__init__()
        return record
