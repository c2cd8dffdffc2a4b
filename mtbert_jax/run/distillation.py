"""Distillation's teacher targets: finished runs' outputs on the student's training records,
computed once and kept in the student's workdir.

The teachers (objective.distillation.teachers: one run, or several averaged as an ensemble)
score every training record before the first step; a resumed run reads the same targets back
from TARGETS_FILE instead of scoring again. Each target is what `TaskKind.probabilities` gives:
SST's class probabilities, Quora's probability, STS's score, averaged over the teachers.

Each teacher reads the records as it was trained to: a teacher of another architecture or
vocabulary (an MPNet run teaching a MiniLM student), another max_length or pair encoding scores
its own tokenization of the student's training file (through the tokenized-data cache), aligned
record by record with what the student trains on. A teacher that reads exactly as the student
does scores the student's own tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from mtbert_jax.caches import cached_arrays
from mtbert_jax.checkpoints.hf import resolve_checkpoint_dir
from mtbert_jax.checkpoints.tokenizer import BertTextTokenizer
from mtbert_jax.data.augment import altered_copies
from mtbert_jax.data.task_files import TaskRecords, read_task_file, resolve_data_dir, task_file_paths
from mtbert_jax.data.tokenized import TaskData, load_task_data, records_data
from mtbert_jax.errors import ConfigError, DataError
from mtbert_jax.evaluation.predict import predict
from mtbert_jax.run.config import RunConfig
from mtbert_jax.run.evaluate import load_members, predict_records, reading
from mtbert_jax.run.trained import TrainedModel
from mtbert_jax.tasks import TASKS

TARGETS_FILE = "teacher_targets.npz"
ALTERED_TARGETS_FILE = "teacher_targets_altered.npz"


def _records_key(data: TaskData) -> str:
    """Which records, in which order: targets are kept per record position."""
    return hashlib.sha256("\n".join(map(str, data.record_ids)).encode()).hexdigest()


def _describe(run: RunConfig) -> str:
    d = run.objective.distillation
    return json.dumps({"teachers": [str(Path(t).resolve()) for t in d.teachers], "checkpoint": d.checkpoint})


def teacher_targets(run: RunConfig, train: dict[str, TaskData], batch_size: int,
                    log: Callable = print) -> dict[str, np.ndarray]:
    """{task: [records] or [records, classes] float32}: the teachers' mean probabilities (scores)
    of the records in `train`, in their order."""
    d = run.objective.distillation
    members = load_members(list(d.teachers), d.checkpoint)
    for workdir, teacher in zip(d.teachers, members):
        missing = [t for t in run.model.tasks if t not in teacher.run.model.tasks]
        if missing:
            raise ConfigError(f"objective.distillation.teachers: {workdir} has no {', '.join(missing)} head")
    student = BertTextTokenizer(resolve_checkpoint_dir(run.checkpoint))
    targets = {}
    for task, data in train.items():
        kind = TASKS[task].kind
        readings: dict[tuple, TaskData] = {}  # teachers that read alike (seeds of one recipe) share one
        each = []
        for workdir, m in zip(d.teachers, members):
            records = _as_read_by(m, workdir, run, task, data, student, readings, log)
            each.append(kind.probabilities(predict(m.predict_fn, m.params, records, batch_size, m.layout,
                                                   m.run.model.symmetric_pairs,
                                                   progress=f"distillation: {workdir} scores {task}")))
        targets[task] = (sum(each) / len(each)).astype(np.float32)
    return targets


def _as_read_by(teacher: TrainedModel, workdir: str, run: RunConfig, task: str, data: TaskData,
                student_tokenizer: BertTextTokenizer, readings: dict, log: Callable) -> TaskData:
    """The student's training records `data` as `teacher` reads them: the student's own tokens
    when it reads alike, else its own tokenization of the student's training file, aligned with
    `data` record by record."""
    teacher_reading = reading(teacher.tokenizer, teacher.run, task)
    if teacher_reading == reading(student_tokenizer, run, task):
        return data
    if teacher_reading not in readings:
        data_dir = resolve_data_dir(run.data_dir or None)
        path = task_file_paths(data_dir, [task], "train")[task]
        pairs = f", {teacher_reading[2]}-encoded pairs" if TASKS[task].is_pair else ""
        log(f"distillation: {workdir} reads {task} its own way ({teacher.tokenizer.family.model_type} tokenizer, "
            f"max_length={teacher.run.max_length}{pairs}): scoring its tokenization of {path}")
        own = load_task_data(task, "train", data_dir, teacher.tokenizer, teacher.run.max_length, teacher_reading[2],
                             cache_dir=run.cache_dir or None)
        readings[teacher_reading] = own.subset(aligned_positions(own, data, path))
    return readings[teacher_reading]


def aligned_positions(whole: TaskData, part: TaskData, path: Path) -> np.ndarray:
    """[len(part)] the index in `whole` (a training file's records, in file order) of each record
    of `part`, the records a student trains on: the file's records in file order, cut
    (max_train_records), filtered (objective.training_subset) or whole.

    Records are matched by id and label, each to the first match after the previous record's, so
    that an id repeated in the file is matched by its position among the repeats. DataError when
    a record of `part` has no match: it was not read from this file."""
    if len(whole) == len(part) and np.array_equal(whole.record_ids, part.record_ids):
        return np.arange(len(part))
    ids, part_ids = np.asarray(whole.record_ids).tolist(), np.asarray(part.record_ids).tolist()
    labelled = whole.labels is not None and part.labels is not None
    labels = whole.labels.tolist() if labelled else [None] * len(whole)
    part_labels = part.labels.tolist() if labelled else [None] * len(part)
    positions, j = np.empty(len(part), np.int64), 0
    for i, key in enumerate(zip(part_ids, part_labels)):
        while j < len(ids) and (ids[j], labels[j]) != key:
            j += 1
        if j == len(ids):
            raise DataError(f"{path}: the student's training record {i} (id {key[0]!r}) is not there in the "
                            f"student's order, so a teacher that reads {part.task} its own way cannot score it")
        positions[i], j = j, j + 1
    return positions


def with_teacher_targets(run: RunConfig, train: dict[str, TaskData], workdir: Path, batch_size: int,
                         write: bool, log: Callable = print) -> dict[str, TaskData]:
    """The training data with each record's teacher target: read from the workdir's
    TARGETS_FILE when it holds these teachers' targets for these records intact, else computed
    and (`write`: the process that writes the workdir) kept there (mtbert_jax/caches.py)."""
    path = Path(workdir) / TARGETS_FILE
    key = json.dumps({"teachers": _describe(run), "records": {t: _records_key(d) for t, d in sorted(train.items())}})
    scored = []

    def score() -> dict[str, np.ndarray]:
        scored.append(True)
        log(f"distillation: scoring {sum(len(d) for d in train.values())} training records with "
            f"{len(run.objective.distillation.teachers)} teacher run(s) (once)")
        return {f"{t}/targets": a for t, a in teacher_targets(run, train, batch_size, log).items()}

    targets = cached_arrays(path, key, score, store=write, warn=lambda m: log(f"warning: {m}"))
    if not scored:
        log(f"distillation: the teachers' targets read from {path}")
    return {t: dataclasses.replace(d, targets=targets[f"{t}/targets"]) for t, d in train.items()}


def with_altered_copies(run: RunConfig, train: dict[str, TaskData], workdir: Path, batch_size: int,
                        write: bool, log: Callable = print) -> dict[str, TaskData]:
    """Each task's training data (with its teacher targets) followed by
    `objective.distillation.altered_copies` altered copies of its records (data/augment.py),
    labelled by the teachers alone, each teacher reading the altered texts its own way. The
    targets are read from the workdir's ALTERED_TARGETS_FILE when it holds them for these very
    texts, else computed and (`write`) kept there. The texts are the data directory's training
    files, matched to `train` record by record (as a teacher's own reading is)."""
    d = run.objective.distillation
    student_tokenizer = BertTextTokenizer(resolve_checkpoint_dir(run.checkpoint))
    data_dir = resolve_data_dir(run.data_dir or None)
    altered: dict[str, TaskRecords] = {}
    for task, data in sorted(train.items()):
        path = task_file_paths(data_dir, [task], "train")[task]
        records = read_task_file(path, task, lenient=True)
        altered[task] = altered_copies(records.subset(aligned_positions(records, data, path)), d.altered_copies,
                                       run.seed)
    student = {task: records_data(records, "train", student_tokenizer, run.max_length, run.model.pair_encoding(task))
               for task, records in altered.items()}
    texts = hashlib.sha256(json.dumps({t: r.texts for t, r in altered.items()}).encode()).hexdigest()
    key = json.dumps({"teachers": _describe(run), "altered_texts": texts})  # the texts themselves, whatever made them
    scored = []

    def score() -> dict[str, np.ndarray]:
        scored.append(True)
        log(f"distillation: scoring {sum(len(r) for r in altered.values())} altered copies of the training "
            f"records with {len(d.teachers)} teacher run(s) (once)")
        members = load_members(list(d.teachers), d.checkpoint)
        targets = {}
        for task, records in altered.items():
            # One tokenization per way of reading; a teacher that reads as the student takes its tokens.
            shared = {reading(student_tokenizer, run, task): student[task]}
            each = [TASKS[task].kind.probabilities(predict_records(
                        m, records, batch_size, shared=shared, progress=f"distillation: {workdir} scores altered {task}"))
                    for workdir, m in zip(d.teachers, members)]
            targets[f"{task}/targets"] = (sum(each) / len(each)).astype(np.float32)
        return targets

    targets = cached_arrays(Path(workdir) / ALTERED_TARGETS_FILE, key, score, store=write,
                            warn=lambda m: log(f"warning: {m}"))
    if not scored:
        log(f"distillation: the teachers' targets of the altered copies read from {Path(workdir) / ALTERED_TARGETS_FILE}")
    return {t: data.followed_by_unlabelled(dataclasses.replace(student[t], targets=targets[f"{t}/targets"]))
            for t, data in train.items()}
