"""Experiment trackers: one interface over TensorBoard and Weights & Biases, so that the loop
logs each metrics record once and never knows which backends are on.

    trackers = make_trackers(workdir, resume_step, tensorboard=True, wandb="offline",
                             enabled=jax.process_index() == 0, tasks=tasks, log=log)
    trackers.log_config(dataclasses.asdict(run))
    trackers.log(record, record["step"])      # each record metrics.jsonl gets
    trackers.close()

Records are metrics.jsonl's (metrics_log.LogWindow.record, Trainer.end_epoch): nested dicts and
lists that `flatten_record` turns into scalar tags ("loss/sst", "lr/encoder", "dev/sts/pearson",
"dev/overall", "grad_norm/quora", "examples_per_second", ...).

A resumed run logs no (tag, step) twice. Every tracker is given the step the run resumed from
and drops anything at or before it (that step's values are already there, from the process that
saved the checkpoint), and within a process drops a tag's step that is not after the last one it
logged. What a killed process logged after its last checkpoint is still in its files: TensorBoard
hides it because a resumed writer starts its file with a SessionLog START at resume_step + 1
(TensorBoard's purge, which tensorboardX's SummaryWriter(purge_step=...) writes too); W&B keeps
it (a W&B run's history cannot be rewound), so the W&B tracker also drops the steps its resumed
run already has. Training resumes exactly, so what was kept equals what would be re-logged.

A tracker that fails (W&B's service, a full disk) says so in one line through `log` and turns
itself off; training goes on.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import functools
import json
import math
import os
import re
import secrets
import string
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from mtbert_jax.errors import first_line
from mtbert_jax.run import atomic
from mtbert_jax.run.config import check_wandb_mode

Log = Callable[[str], None]
WANDB_RUN_ID_FILE = "wandb_run_id"  # in the workdir: a resumed run continues the same W&B run
# Record keys that name a dict's summary: shown beside it ("dev/overall" next to "dev/sst/accuracy").
RENAMED = {"dev_overall": "dev/overall", "dev_unaveraged_overall": "dev_unaveraged/overall"}
# Distributions whose versions a run records (with any jax plugin and libtpu found installed).
PACKAGES = ("mtbert-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "transformers",
            "tokenizers", "tensorboardX", "wandb")


def flatten_record(record: Mapping[str, Any], tasks: Sequence[str] = ()) -> dict[str, float]:
    """{tag: value} of every number in a metrics record, the key path joined by "/".

    "step" is left out (it is the x axis), and so are strings, None and flags (a dev record's
    `final`). A list is named by task where it has one entry per task of `tasks` (grad_norm, in
    the order the step stacks the tasks: the stages' task order) and by index otherwise; a square matrix of task pairs
    (pcgrad_cosines, symmetric with ones on its diagonal) gives its upper triangle, "sst-sts".
    """
    flat: dict[str, float] = {}

    def names(n: int) -> list[str]:
        return list(tasks) if len(tasks) == n else [str(i) for i in range(n)]

    def visit(tag: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                visit(f"{tag}/{key}" if tag else str(key), inner)
        elif isinstance(value, (list, tuple)):
            if value and all(isinstance(row, (list, tuple)) for row in value):
                if all(len(row) == len(value) for row in value):  # square: pairs, once each
                    n = names(len(value))
                    for i in range(len(value)):
                        for j in range(i + 1, len(value)):
                            visit(f"{tag}/{n[i]}-{n[j]}", value[i][j])
                else:
                    for i, row in enumerate(value):
                        visit(f"{tag}/{i}", row)
            else:
                for name, inner in zip(names(len(value)), value):
                    visit(f"{tag}/{name}", inner)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) or _is_numpy_number(value):
            flat[tag] = float(value)

    for key, value in record.items():
        if key != "step":
            visit(RENAMED.get(key, key), value)
    return flat


def _is_numpy_number(value: Any) -> bool:
    """A numpy scalar or 0-d array of a number (a record built from host arrays)."""
    return isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0 and np.issubdtype(value.dtype, np.number)


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{dotted.name: value} of a nested config (as --config.FIELD names it); lists as JSON text."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten_config(value, name + ".")
        elif isinstance(value, (str, bool, int, float)) or value is None:
            flat[name] = value
        else:
            flat[name] = json.dumps(value, default=str)
    return flat


@functools.lru_cache(maxsize=1)
def _provenance() -> dict:
    from importlib import metadata

    def version(distribution: str) -> Optional[str]:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            return None

    packages = {name: version(name) for name in PACKAGES}
    for dist in metadata.distributions():  # the accelerator's plugins: jax-cuda12-plugin, libtpu, ...
        name = dist.metadata["Name"] or ""
        if re.match(r"(jax[-_]cuda|jax[-_]rocm|libtpu)", name):
            packages[name] = dist.version
    root = Path(__file__).resolve().parents[2]
    commit = _git(root, "rev-parse", "HEAD")
    dirty = None if commit is None else bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
    return {"git_commit": commit, "git_dirty": dirty, "packages": packages}


def provenance() -> dict:
    """What the run's numbers came from: the source's git commit (None outside a checkout, e.g.
    an installed wheel), whether tracked files differed from it, and the versions of the
    packages that decide the numbers."""
    return copy.deepcopy(_provenance())


def _git(root: Path, *args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


class Tracker(abc.ABC):
    """Where metrics records go besides metrics.jsonl. Every method is safe to call on a tracker
    that is off (another process than the first, a backend that failed): it does nothing.

    A backend's failure is said in one line (`name`: what failed; `consequence`), after which
    the tracker is off and training goes on."""

    name = "tracker"
    consequence = "training goes on without it"

    @abc.abstractmethod
    def log(self, record: Mapping[str, Any], step: int) -> None:
        """One metrics record (a training window's or a dev evaluation's) at `step`."""

    @abc.abstractmethod
    def log_config(self, config: Mapping[str, Any]) -> None:
        """The run's configuration (dataclasses.asdict(RunConfig)), with the run's provenance."""

    @abc.abstractmethod
    def close(self) -> None:
        """Writes out what is pending; the tracker logs nothing after."""

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _turn_off(self) -> None:
        """Forgets the backend: every later call does nothing."""

    def _fail(self, what: str, error: BaseException) -> None:
        self.log_line(f"{self.name}: {what} failed ({first_line(error)}); {self.consequence}")
        self._turn_off()

    @contextlib.contextmanager
    def _backend_call(self, what: str) -> Iterator[None]:
        """Runs a call into the backend's library: any exception it raises (a service gone, a
        full disk, a bug of the library) is `_fail`."""
        try:
            yield
        except Exception as e:
            self._fail(what, e)


class _StepFilter:
    """The (tag, step) pairs a tracker may still write: after `floor` (the step resumed from,
    whose values are already written), and after the tag's last step in this process."""

    def __init__(self, floor: int):
        self.floor, self.last = floor, {}

    def new(self, scalars: Mapping[str, float], step: int) -> dict[str, float]:
        if step <= self.floor:
            return {}
        fresh = {tag: v for tag, v in scalars.items() if step > self.last.get(tag, -math.inf)}
        self.last.update(dict.fromkeys(fresh, step))
        return fresh


class TensorBoardTracker(Tracker):
    """Scalars, the config as text and as hparams, in TensorBoard event files under `logdir`
    (WORKDIR/tensorboard), written by this process alone and only when `enabled` (process 0).

    Events are written synchronously, each log call flushed to disk: tensorboardX's SummaryWriter
    queues events for a background thread and its flush() does not wait for that queue, so a
    kill -9 could lose a record logged before the checkpoint, which the resumed run then never
    logs again. tensorboardX's own EventsWriter and summary protos write the file. The file name
    ends in nanoseconds and the process id, so that two writers started within one second (a fast
    restart) neither overwrite nor misorder each other's files.
    """

    name, consequence = "TensorBoard", "training goes on without TensorBoard"

    def __init__(self, logdir: Path, resume_step: int = 0, enabled: bool = True, tasks: Sequence[str] = (),
                 log: Log = print):
        self.logdir, self.tasks, self.log_line = Path(logdir), tuple(tasks), log
        self.resume_step, self.filter, self.writer = resume_step, _StepFilter(resume_step), None
        if not enabled:
            return
        try:
            from tensorboardX.event_file_writer import EventsWriter
            from tensorboardX.proto.event_pb2 import Event, SessionLog
        except ImportError:
            self.log_line("TensorBoard: tensorboardX is not installed (pip install -r requirements.txt); "
                          "no TensorBoard events are written")
            return
        with self._backend_call(f"opening the event file in {self.logdir}"):
            self.logdir.mkdir(parents=True, exist_ok=True)
            self.writer = EventsWriter(str(self.logdir / "events"), f".{time.time_ns()}.{os.getpid()}")
            # TensorBoard's purge: values a killed process logged after this step are hidden.
            self.writer.write_event(Event(step=resume_step + 1, wall_time=time.time(),
                                          session_log=SessionLog(status=SessionLog.START)))
            self.writer.flush()

    def _turn_off(self) -> None:
        self.writer = None

    def _write(self, step: int, values: Iterable, what: str) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        with self._backend_call(f"{what} in {self.logdir}"):
            self.writer.write_event(Event(step=step, wall_time=time.time(), summary=Summary(value=list(values))))
            self.writer.flush()

    def log(self, record: Mapping[str, Any], step: int) -> None:
        if self.writer is None:
            return
        from tensorboardX.summary import scalar

        fresh = self.filter.new(flatten_record(record, self.tasks), step)
        if fresh:
            self._write(step, [v for tag, x in fresh.items() for v in scalar(tag, x).value], f"logging step {step}")

    def log_config(self, config: Mapping[str, Any]) -> None:
        """The config and provenance as JSON text ("config", "provenance": the Text tab), and the
        flattened config as hparams (the HParams tab compares runs by them, with dev/overall),
        at the step the run (re)starts from."""
        if self.writer is None:
            return
        from tensorboardX.summary import hparams, text

        def as_markdown(payload) -> str:  # a code block: TensorBoard renders text as markdown
            return "\n".join("    " + line for line in json.dumps(payload, indent=2, default=str).splitlines())

        exp, start, end = hparams(flatten_config(config), {"dev/overall": None})
        values = [*text("config", as_markdown(config)).value, *text("provenance", as_markdown(provenance())).value,
                  *exp.value, *start.value, *end.value]
        self._write(self.resume_step, values, "writing the config")

    def close(self) -> None:
        if self.writer is not None:
            with self._backend_call(f"closing the event file in {self.logdir}"):
                self.writer.close()
            self.writer = None


def wandb_run_id(workdir: Path) -> str:
    """The W&B run id of the run in `workdir`: the one saved there, or a new one saved there
    first (before W&B starts, so that a run killed at any point resumes into the same W&B run)."""
    path = Path(workdir) / WANDB_RUN_ID_FILE
    try:
        saved = path.read_text().strip()
    except FileNotFoundError:
        saved = ""
    if saved:
        return saved
    alphabet = string.ascii_lowercase + string.digits  # W&B's own ids: 8 of these
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    Path(workdir).mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, run_id + "\n")
    return run_id


class WandbTracker(Tracker):
    """A Weights & Biases run, mode "offline" (files under WORKDIR/wandb/ only, for `wandb sync`
    later) or "online". The run id is kept in WORKDIR/wandb_run_id and the run started with
    resume="allow", so a resumed training run continues the same W&B run.

    Any exception from wandb (not installed, no API key, no network, its service gone) is one
    line through `log`, after which the tracker is off and training goes on. `init_kwargs` are
    added to wandb.init's (tags, group, entity, settings).
    """

    name, consequence = "W&B", "training goes on without W&B"

    def __init__(self, workdir: Path, mode: str, project: str = "", name: str = "", resume_step: int = 0,
                 enabled: bool = True, tasks: Sequence[str] = (), log: Log = print,
                 init_kwargs: Optional[Mapping[str, Any]] = None):
        check_wandb_mode(mode)
        self.workdir, self.tasks, self.log_line, self.run = Path(workdir), tuple(tasks), log, None
        self.filter = _StepFilter(resume_step)
        if not enabled or mode == "disabled":
            return
        try:
            import wandb
        except ImportError:
            self.log_line("W&B: wandb is not installed (pip install -r requirements-wandb.txt); "
                          "training goes on without W&B")
            return
        with self._backend_call("starting the run"):
            self.run = wandb.init(project=project or None, name=name or None, id=wandb_run_id(self.workdir),
                                  resume="allow", mode=mode, dir=str(self.workdir), **(init_kwargs or {}))
            # A resumed W&B run has the history of the killed process, past the checkpoint too:
            # its steps are not logged again (W&B would refuse them, a warning each).
            self.filter.floor = max(resume_step, int(self.run.starting_step) - 1)

    def _turn_off(self) -> None:
        self.run = None

    @property
    def directory(self) -> Optional[Path]:
        """The run's local directory (WORKDIR/wandb/offline-run-DATE-ID or run-DATE-ID)."""
        return None if self.run is None else Path(self.run.dir).parent

    def log(self, record: Mapping[str, Any], step: int) -> None:
        if self.run is None:
            return
        fresh = self.filter.new(flatten_record(record, self.tasks), step)
        if not fresh:
            return
        with self._backend_call(f"logging step {step}"):
            # A training record and the dev record of the same step share one W&B row.
            self.run.log(fresh, step=step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        if self.run is None:
            return
        with self._backend_call("recording the config"):
            # A resumed run may have changed its length (max_steps, num_epochs): values may change.
            self.run.config.update({**config, "provenance": provenance()}, allow_val_change=True)

    def close(self) -> None:
        if self.run is None:
            return
        with self._backend_call("finishing the run"):
            self.run.finish()
        self.run = None


class CompositeTracker(Tracker):
    """Every call to each of `trackers`, in order; with none, a tracker that does nothing."""

    def __init__(self, trackers: Sequence[Tracker] = ()):
        self.trackers = list(trackers)

    def log(self, record: Mapping[str, Any], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(record, step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_config(config)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def make_trackers(workdir: Path, resume_step: int, *, tensorboard: bool = True, wandb: str = "disabled",
                  wandb_project: str = "", wandb_name: str = "", enabled: bool = True, tasks: Sequence[str] = (),
                  log: Log = print) -> CompositeTracker:
    """The run's trackers: TensorBoard in WORKDIR/tensorboard when `tensorboard`, W&B in mode
    `wandb` ("disabled", "offline", "online"); all off where not `enabled` (every process but
    the first of a multi-process run). `tasks`: the step's task order, naming grad_norm's entries."""
    check_wandb_mode(wandb)
    trackers: list[Tracker] = []
    if tensorboard and enabled:
        trackers.append(TensorBoardTracker(Path(workdir) / "tensorboard", resume_step, enabled, tasks, log))
    if wandb != "disabled" and enabled:
        trackers.append(WandbTracker(workdir, wandb, wandb_project, wandb_name, resume_step, enabled, tasks, log))
    return CompositeTracker(trackers)
