"""Distillation's teacher targets: finished runs' outputs on the student's training records,
computed once and kept in the student's workdir.

The teachers (objective.distillation.teachers: one run, or several averaged as an ensemble)
score every training record before the first step; a resumed run reads the same targets back
from TARGETS_FILE instead of scoring again. Each target is what `TaskKind.probabilities` gives:
SST's class probabilities, Quora's probability, STS's score, averaged over the teachers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from mtbert_jax.caches import cached_arrays
from mtbert_jax.data.tokenized import TaskData
from mtbert_jax.errors import ConfigError
from mtbert_jax.evaluation.predict import predict
from mtbert_jax.run.config import RunConfig
from mtbert_jax.run.evaluate import load_members
from mtbert_jax.tasks import TASKS

TARGETS_FILE = "teacher_targets.npz"


def _records_key(data: TaskData) -> str:
    """Which records, in which order: targets are kept per record position."""
    return hashlib.sha256("\n".join(map(str, data.record_ids)).encode()).hexdigest()


def _describe(run: RunConfig) -> str:
    d = run.objective.distillation
    return json.dumps({"teachers": [str(Path(t).resolve()) for t in d.teachers], "checkpoint": d.checkpoint})


def teacher_targets(run: RunConfig, train: dict[str, TaskData], batch_size: int) -> dict[str, np.ndarray]:
    """{task: [records] or [records, classes] float32}: the teachers' mean probabilities (scores)."""
    d = run.objective.distillation
    members = load_members(list(d.teachers), d.checkpoint)
    for workdir, teacher in zip(d.teachers, members):
        missing = [t for t in run.model.tasks if t not in teacher.run.model.tasks]
        if missing:
            raise ConfigError(f"objective.distillation.teachers: {workdir} has no {', '.join(missing)} head")
        for task in run.model.tasks:  # the teacher reads the student's tokens: they must be its own
            if teacher.run.max_length != run.max_length or \
                    teacher.run.model.pair_encoding(task) != run.model.pair_encoding(task):
                raise ConfigError(f"objective.distillation.teachers: {workdir} reads {task} with max_length="
                                  f"{teacher.run.max_length} and a {teacher.run.model.pair_encoding(task)}-encoded "
                                  f"pair; the student with {run.max_length} and "
                                  f"{run.model.pair_encoding(task)}: they must agree")
    targets = {}
    for task, data in train.items():
        kind = TASKS[task].kind
        each = [kind.probabilities(predict(m.predict_fn, m.params, data, batch_size, m.layout,
                                           m.run.model.symmetric_pairs)) for m in members]
        targets[task] = (sum(each) / len(each)).astype(np.float32)
    return targets


def with_teacher_targets(run: RunConfig, train: dict[str, TaskData], workdir: Path, batch_size: int,
                         write: bool, log: Callable = print) -> dict[str, TaskData]:
    """The training data with each record's teacher target: read from the workdir's
    TARGETS_FILE when it holds these teachers' targets for these records intact, else computed
    and (`write`: the process that writes the workdir) kept there (mtbert_jax/caches.py)."""
    path = Path(workdir) / TARGETS_FILE
    key = json.dumps({"teachers": _describe(run), "records": {t: _records_key(d) for t, d in sorted(train.items())}})
    if path.exists():
        log(f"distillation: reading the teachers' targets from {path}")

    def score() -> dict[str, np.ndarray]:
        log(f"distillation: scoring {sum(len(d) for d in train.values())} training records with "
            f"{len(run.objective.distillation.teachers)} teacher run(s) (once)")
        return {f"{t}/targets": a for t, a in teacher_targets(run, train, batch_size).items()}

    targets = cached_arrays(path, key, score, store=write, warn=lambda m: log(f"warning: {m}"))
    return {t: dataclasses.replace(d, targets=targets[f"{t}/targets"]) for t, d in train.items()}
