"""What a run logs: metrics.jsonl in the workdir (and TensorBoard events when tensorboardX is
installed), and the per-step numbers averaged over each logging window."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from mtbert_jax.run import atomic


class MetricsLog:
    """JSON lines, one record per logging step and per dev evaluation; on resume, records past
    the restored step are dropped, so the log reads as an uninterrupted run's.

    Each record has `run_seconds`: the wall-clock time of the run up to it, from `started` (the
    process's start) plus the time the run's earlier processes logged (what a killed process did
    after its last kept record is not counted)."""

    def __init__(self, path: Path, resume_step: int, enabled: bool, started: float | None = None):
        self.path, self.enabled, self.tensorboard = path, enabled, None
        self.started, self.earlier_seconds = time.perf_counter() if started is None else started, 0.0
        if enabled and path.exists():
            kept = [line for line in atomic.json_lines(path.read_text())
                    if json.loads(line).get("step", 0) <= resume_step]
            atomic.write_text(path, "".join(line + "\n" for line in kept))
            self.earlier_seconds = max([json.loads(line).get("run_seconds", 0.0) for line in kept] + [0.0])
        if enabled:
            try:
                from tensorboardX import SummaryWriter
                self.tensorboard = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:
                pass

    def records(self) -> list[dict]:
        """The records kept so far (those up to the step resumed from, and those since)."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in atomic.json_lines(self.path.read_text())]

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {**record, "run_seconds": round(self.earlier_seconds + time.perf_counter() - self.started, 3)}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for group in ("loss", "dev", "lr"):
                for task, value in record.get(group, {}).items():
                    for name, number in (value.items() if isinstance(value, dict) else [("", value)]):
                        self.tensorboard.add_scalar(f"{group}/{task}{'/' + name if name else ''}",
                                                    number, record["step"])
            for name in ("examples_per_second", "dev_overall", "pcgrad_conflicts", "param_norm", "update_norm"):
                if name in record:
                    self.tensorboard.add_scalar(name, record[name], record["step"])
            self.tensorboard.flush()


class LogWindow:
    """Losses and examples since the last log line; `record` averages them and starts anew."""

    def __init__(self):
        self.examples, self.losses, self.start = 0.0, {}, time.perf_counter()

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

    def add_examples(self, examples: float) -> None:
        self.examples += examples

    def add_losses(self, losses: Mapping[str, float]) -> None:
        for task, value in losses.items():
            self.losses.setdefault(task, []).append(value)

    def record(self, step: int, epoch: int, metrics: Mapping, padding_efficiency: float) -> dict:
        """The log record of this window; `metrics` are the last step's (host values)."""
        elapsed = time.perf_counter() - self.start
        record = {"step": step, "epoch": epoch,
                  "loss": {t: float(np.mean(v)) for t, v in sorted(self.losses.items())},
                  "examples_per_second": self.examples / max(elapsed, 1e-9),
                  "grad_norm": np.asarray(metrics["grad_norm"]).tolist(),
                  "lr": {k.split("/", 1)[1]: float(v) for k, v in sorted(metrics.items()) if k.startswith("lr/")},
                  "param_norm": float(metrics["param_norm"]), "update_norm": float(metrics["update_norm"]),
                  "padding_efficiency": padding_efficiency}
        if "pcgrad_conflicts" in metrics:
            record["pcgrad_conflicts"] = int(metrics["pcgrad_conflicts"])
            record["pcgrad_cosines"] = np.asarray(metrics["pcgrad_cosines"]).round(4).tolist()
        if "gse/loss" in metrics:  # GSE's second forward: each task's loss after the first update
            record["gse"] = {"loss": {t: float(v) for t, v in sorted(metrics["gse/loss"].items())},
                             "grad_norm": np.asarray(metrics["gse/grad_norm"]).tolist(),
                             "update_norm": float(metrics["gse/update_norm"])}
        self.__init__()
        return record
