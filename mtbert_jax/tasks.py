"""The tasks: their files, columns, labels and kind.

A task's kind decides its head, loss, divergence, metric and how outputs become labels:
- multiclass: one sentence, softmax over classes (SST: 5, CFIMDB: 2), accuracy
- binary:     a sentence pair, one logit (Quora paraphrase), accuracy
- regression: a sentence pair, a score in a range (STS similarity 0-5), Pearson r
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

MULTICLASS, BINARY, REGRESSION = "multiclass", "binary", "regression"
SPLITS = ("train", "dev", "test")
_SPLIT_SUFFIX = {"train": "train", "dev": "dev", "test": "test-student"}


class LabelOutOfRange(ValueError):
    """A label that parses but lies outside the task's classes or score range."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task's files and labels."""

    name: str
    kind: str  # MULTICLASS | BINARY | REGRESSION
    file_stem: str  # files are {file_stem}-train.csv, -dev.csv, -test-student.csv
    text_columns: tuple[str, ...]  # one column (a sentence) or two (a pair)
    label_column: str
    num_classes: Optional[int] = None  # multiclass: classes 0..num_classes-1; binary: 2
    score_range: tuple[float, float] = (0.0, 0.0)  # regression

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def is_classification(self) -> bool:
        return self.kind != REGRESSION

    def file_name(self, split: str) -> str:
        if split not in _SPLIT_SUFFIX:
            raise ValueError(f"split {split!r}: expected one of {SPLITS}")
        return f"{self.file_stem}-{_SPLIT_SUFFIX[split]}.csv"

    def parse_label(self, text: str) -> float:
        """'3' / '1.0' / '4.6' -> a number; ValueError when unparseable; LabelOutOfRange when
        outside the classes or the score range."""
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {text!r}")
        if self.is_classification:
            if value != int(value):
                raise ValueError(f"not a class number: {text!r}")
            if not 0 <= value < self.num_classes:
                raise LabelOutOfRange(f"{self.label_column}={text!r} is outside the task's classes "
                                      f"0..{self.num_classes - 1}")
        elif not self.score_range[0] <= value <= self.score_range[1]:
            raise LabelOutOfRange(f"{self.label_column}={text!r} is outside "
                                  f"{self.score_range[0]:g}-{self.score_range[1]:g}")
        return value


TASKS: dict[str, TaskSpec] = {
    "sst": TaskSpec("sst", MULTICLASS, "ids-sst", ("sentence",), "sentiment", num_classes=5),
    "cfimdb": TaskSpec("cfimdb", MULTICLASS, "ids-cfimdb", ("sentence",), "sentiment", num_classes=2),
    "quora": TaskSpec("quora", BINARY, "quora", ("sentence1", "sentence2"), "is_duplicate", num_classes=2),
    "sts": TaskSpec("sts", REGRESSION, "sts", ("sentence1", "sentence2"), "similarity",
                    score_range=(0.0, 5.0)),
}


def kind(task: str) -> str:
    return TASKS[task].kind
