"""Readers for the CS224N task files: tab-separated, a header line, an index column.

Columns are found by their header names, so the unlabelled *-test-student files (whose header
has an extra leading field) read like the others. Quoted fields with doubled quotes parse as
the csv module does. In a training file a record with a missing or unparseable label or the
wrong number of fields is skipped and counted; in an evaluation file it is an error naming the
file and line. A label out of range, bytes that are not UTF-8 and a quoted field that runs
over several lines (an unclosed quote, which would swallow the records after it) are always
errors.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from mtbert_jax.errors import DataError
from mtbert_jax.tasks import TASKS, LabelOutOfRange

DATA_DIR_ENV = "MTBERT_DATA_DIR"


@dataclasses.dataclass
class TaskRecords:
    """The records of one task file, in file order."""

    task: str
    path: Path
    record_ids: list[str]
    texts: list[list[str]]  # texts[column][record]: one list per text column
    labels: Optional[np.ndarray]  # int32 classes or float32 scores; None when unlabelled
    skipped: list[tuple[int, str]]  # (line, reason) of each skipped record

    def __len__(self) -> int:
        return len(self.record_ids)

    def subset(self, keep: Sequence[int]) -> "TaskRecords":
        """The records at indices `keep`, in that order."""
        return TaskRecords(self.task, self.path, [self.record_ids[i] for i in keep],
                           [[column[i] for i in keep] for column in self.texts],
                           None if self.labels is None else self.labels[np.asarray(keep, np.int64)], [])


def resolve_data_dir(data_dir: Optional[str] = None) -> Path:
    """The `data_dir` config field if set, else $MTBERT_DATA_DIR, else ../shared/data."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    beside_project = Path(__file__).resolve().parents[3] / "shared" / "data"
    if beside_project.is_dir():
        return beside_project
    raise DataError(f"no data directory: set the data_dir config field or ${DATA_DIR_ENV} "
                    "to the folder holding the task CSV files")


def task_file_paths(data_dir: str | Path, tasks: Sequence[str], split: str) -> dict[str, Path]:
    """Paths of the tasks' files for a split; one error listing every file that is missing."""
    data_dir = Path(data_dir)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise DataError(f"unknown task(s) {unknown}: expected some of {sorted(TASKS)}")
    paths = {t: data_dir / TASKS[t].file_name(split) for t in tasks}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(f"{data_dir}: missing task file(s) for split {split!r}: "
                        f"{', '.join(missing)} (expected names: "
                        f"{', '.join(p.name for p in paths.values())})")
    return paths


def text_lines(path: Path) -> Iterator[str]:
    """The file's lines, decoded one at a time (bounded memory); non-UTF-8 names its line."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None
    with f:
        for number, raw in enumerate(f, 1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: line {number}: bytes that are not UTF-8 "
                                f"({raw[e.start:e.end]!r}); expected UTF-8 text") from None


def _fields(reader, path: Path) -> Iterator[list[str]]:
    """csv's records, with its errors (a field over its 131,072-character limit, which an
    opening quote never closed also runs into) as one DataError naming the line."""
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            hint = ": an opening quote never closed?" if "field limit" in str(e) else ""
            raise DataError(f"{path}: line {reader.line_num}: {e}{hint}") from None
        yield fields


def _open_with_header(path: Path, task: str):
    """(csv reader, its records after the header, header, text column indices, label column
    index or None): a file's header read and checked, its records not yet."""
    spec = TASKS[task]
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    csv_reader = csv.reader(text_lines(path), delimiter="\t")
    reader = _fields(csv_reader, path)
    header = next(reader, None)
    if header is None:
        raise DataError(f"{path}: empty file; expected a header line")
    wanted = ("id",) + spec.text_columns
    absent = [c for c in wanted if c not in header]
    if absent:
        raise DataError(f"{path}: line 1: header {header} lacks column(s) {absent}; "
                        f"a {task} file has columns {list(wanted) + [spec.label_column]}")
    columns = [header.index(c) for c in wanted]
    label_at = header.index(spec.label_column) if spec.label_column in header else None
    return csv_reader, reader, header, columns, label_at


def is_labelled(path: str | Path, task: str) -> bool:
    """Whether a task file's header has the label column; reads the header alone (checked as
    iter_task_file checks it), so a caller can refuse a file before any work on the others."""
    *_, label_at = _open_with_header(Path(path), task)  # the file closes as its reader is dropped
    return label_at is not None


def iter_task_file(path: str | Path, task: str, lenient: bool = False,
                   chunk_size: int = 10_000) -> Iterator[TaskRecords]:
    """Reads a task file in chunks of at most `chunk_size` records (bounded memory).

    `lenient` (training files): skip and count bad records. Labels are read when the header
    has the label column (train and dev files); the test-student files have none.
    """
    path, spec = Path(path), TASKS[task]
    csv_reader, reader, header, columns, label_at = _open_with_header(path, task)

    def empty():
        return [], [[] for _ in spec.text_columns], [], []

    record_ids, texts, labels, skipped = empty()
    yielded = False
    end_line = 1  # csv's line_num: lines consumed so far (a quoted field may span lines)
    for fields in reader:
        line, end_line = end_line + 1, csv_reader.line_num
        if not fields:
            continue  # a blank line holds no record
        if end_line > line:  # none of the course's files has a field spanning lines
            raise DataError(f"{path}: line {line}: a quoted field runs on to line {end_line}, taking "
                            f"{end_line - line} more line(s) into this record: an opening quote never closed?")
        problem = None
        if len(fields) != len(header):
            problem = f"{len(fields)} fields, expected {len(header)} as in the header"
        elif label_at is not None:
            try:
                labels.append(spec.parse_label(fields[label_at]))
            except LabelOutOfRange as e:
                raise DataError(f"{path}: line {line}: {e}") from None
            except ValueError:
                problem = (f"{spec.label_column}={fields[label_at]!r} is "
                           f"{'empty' if not fields[label_at].strip() else 'not a number'}")
        if problem:
            if not lenient:
                raise DataError(f"{path}: line {line}: {problem}")
            skipped.append((line, problem))
            continue
        record_ids.append(fields[columns[0]])
        for column_texts, at in zip(texts, columns[1:]):
            column_texts.append(fields[at])
        if len(record_ids) == chunk_size:
            yield _records(task, path, record_ids, texts, labels if label_at is not None else None, skipped)
            record_ids, texts, labels, skipped = empty()
            yielded = True
    if record_ids or skipped or not yielded:
        yield _records(task, path, record_ids, texts, labels if label_at is not None else None, skipped)


def _records(task, path, record_ids, texts, labels, skipped) -> TaskRecords:
    label_array = None
    if labels is not None:
        dtype = TASKS[task].kind.label_dtype
        label_array = np.asarray(labels, dtype=dtype)
    return TaskRecords(task, path, record_ids, texts, label_array, skipped)


def read_task_file(path: str | Path, task: str, lenient: bool = False) -> TaskRecords:
    """The whole file as one TaskRecords (see iter_task_file)."""
    return next(iter_task_file(path, task, lenient, chunk_size=sys.maxsize))
