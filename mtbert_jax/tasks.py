"""The tasks: their files, columns, labels and kind.

A task's kind is one object that owns everything decided by it: the loss on the head's output,
the divergence between two outputs (SMART, R-Drop), the labels an output stands for, the metric,
and the value written to the course's prediction files.
- multiclass: one sentence, softmax over classes (SST: 5, CFIMDB: 2), accuracy
- binary:     a sentence pair, one logit (Quora paraphrase), accuracy
- regression: a sentence pair, a score in a range (STS similarity 0-5), Pearson r

Several models' outputs combine as the mean of what they stand for (`average`): class
probabilities, the paraphrase probability, the score; not of logits, whose scales differ
between runs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array


class TaskKind:
    """What a kind of task does with its head's outputs; one instance per kind."""

    name: str
    is_classification: bool = True
    label_dtype = np.int32

    def loss(self, prediction: Array, labels: Array) -> Array:
        """[batch] training loss of each example."""
        raise NotImplementedError

    def log_probs(self, prediction: Array) -> Array:
        """[batch, classes] log-probabilities of a classifier's outputs."""
        raise NotImplementedError

    def soft_loss(self, prediction: Array, target: Array, temperature: float = 1.0) -> Array:
        """[batch] distillation loss against a teacher's `target` (what `probabilities` gives:
        class probabilities, the positive class's probability, a score); 0 where the student
        matches the teacher."""
        raise NotImplementedError

    def divergence(self, p: Array, q: Array) -> Array:
        """[batch] symmetric divergence between two outputs of the head: KL(P||Q) + KL(Q||P)
        between the distributions they stand for (SMART's l_s, R-Drop)."""
        log_p, log_q = self.log_probs(p), self.log_probs(q)
        return jnp.sum((jnp.exp(log_p) - jnp.exp(log_q)) * (log_p - log_q), -1)

    def labels(self, outputs: np.ndarray) -> np.ndarray:
        """The labels host-side outputs stand for."""
        raise NotImplementedError

    def metrics(self, predicted: np.ndarray, gold: np.ndarray) -> dict[str, float]:
        return {"accuracy": float(np.mean(predicted == gold))}

    def starter_values(self, labels: np.ndarray) -> list:
        """Per-record values whose str() is what the CS224N starter code prints."""
        raise NotImplementedError

    def describe(self, output: np.ndarray) -> dict:
        """One example's output for people (evaluate.py --sentence / --pair)."""
        raise NotImplementedError

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """What host-side outputs stand for, as numbers that average: float64."""
        raise NotImplementedError

    def from_probabilities(self, values: np.ndarray) -> np.ndarray:
        """Head outputs standing for `values`: labels(from_probabilities(p)) are p's labels."""
        raise NotImplementedError

    def average(self, outputs: Sequence[np.ndarray], weights: Optional[Sequence[float]] = None) -> np.ndarray:
        """Several models' outputs for the same records as one output: the weighted mean of
        their probabilities (scores), written back as a head output (float32). One model's
        outputs come back as they are."""
        if len(outputs) == 1:
            return outputs[0]
        weights = np.full(len(outputs), 1 / len(outputs)) if weights is None else np.asarray(weights, np.float64)
        mean = sum(w * self.probabilities(o) for w, o in zip(weights / weights.sum(), outputs))
        return self.from_probabilities(mean).astype(np.float32)

    def __repr__(self) -> str:
        return self.name


class Multiclass(TaskKind):
    name = "multiclass"

    def loss(self, prediction, labels):
        return optax.softmax_cross_entropy_with_integer_labels(prediction.astype(jnp.float32),
                                                               labels.astype(jnp.int32))

    def log_probs(self, prediction):
        return jax.nn.log_softmax(prediction.astype(jnp.float32), -1)

    def soft_loss(self, prediction, target, temperature=1.0):
        """T^2 KL(teacher_T || student_T), both distributions softened by the temperature
        (Hinton et al. 2015; T^2 keeps the gradients' scale as T changes). An ensemble's mean
        probabilities p soften as p^(1/T), renormalised: softmax(log p / T)."""
        teacher = jax.nn.log_softmax(jnp.log(jnp.maximum(target.astype(jnp.float32), 1e-12)) / temperature, -1)
        student = jax.nn.log_softmax(prediction.astype(jnp.float32) / temperature, -1)
        return temperature ** 2 * jnp.sum(jnp.exp(teacher) * (teacher - student), -1)

    def labels(self, outputs):
        return outputs.argmax(-1)

    def starter_values(self, labels):
        return [int(x) for x in labels]  # np.argmax -> int64, printed "3"

    def describe(self, output):
        probabilities = np.exp(output - output.max())
        probabilities /= probabilities.sum()
        return {"class": int(output.argmax()), "probabilities": [round(float(p), 4) for p in probabilities]}

    def probabilities(self, outputs):
        logits = np.asarray(outputs, np.float64)
        exp = np.exp(logits - logits.max(-1, keepdims=True))
        return exp / exp.sum(-1, keepdims=True)

    def from_probabilities(self, values):
        return np.log(np.maximum(values, np.finfo(np.float64).tiny))  # log-probabilities: softmax gives them back


class Binary(TaskKind):
    """One logit: the probability of the positive class is its sigmoid."""

    name = "binary"

    def loss(self, prediction, labels):
        return optax.sigmoid_binary_cross_entropy(prediction.astype(jnp.float32), labels.astype(jnp.float32))

    def log_probs(self, prediction):
        """A logit as [log(1 - p), log p]."""
        prediction = prediction.astype(jnp.float32)
        return jnp.stack([jax.nn.log_sigmoid(-prediction), jax.nn.log_sigmoid(prediction)], -1)

    def soft_loss(self, prediction, target, temperature=1.0):
        """KL(teacher || student) of the two Bernoulli distributions: cross-entropy against the
        teacher's probability less its entropy (the temperature is for distributions over classes)."""
        p = jnp.clip(target.astype(jnp.float32), 1e-7, 1 - 1e-7)
        entropy = -(p * jnp.log(p) + (1 - p) * jnp.log1p(-p))
        return optax.sigmoid_binary_cross_entropy(prediction.astype(jnp.float32), p) - entropy

    def labels(self, outputs):
        return (outputs > 0).astype(np.int32)

    def starter_values(self, labels):
        return list(np.asarray(labels, np.float32))  # sigmoid().round() -> float32, "1.0"

    def describe(self, output):
        return {"paraphrase_probability": round(float(1 / (1 + np.exp(-output))), 4)}

    def probabilities(self, outputs):
        return 1 / (1 + np.exp(-np.asarray(outputs, np.float64)))

    def from_probabilities(self, values):
        p = np.clip(values, 1e-12, 1 - 1e-12)
        return np.log(p) - np.log1p(-p)  # the logit: > 0 exactly where p > 0.5


class Regression(TaskKind):
    """A score: squared error, Pearson r."""

    name = "regression"
    is_classification = False
    label_dtype = np.float32

    def loss(self, prediction, labels):
        return jnp.square(prediction.astype(jnp.float32) - labels.astype(jnp.float32))

    def divergence(self, p, q):
        return jnp.square(p.astype(jnp.float32) - q.astype(jnp.float32))

    def soft_loss(self, prediction, target, temperature=1.0):
        return jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32))

    def labels(self, outputs):
        return outputs

    def metrics(self, predicted, gold):
        from scipy import stats  # scipy only where a score is evaluated

        return {"pearson": float(stats.pearsonr(predicted, gold).statistic),
                "spearman": float(stats.spearmanr(predicted, gold).statistic)}

    def starter_values(self, labels):
        return list(np.asarray(labels, np.float32))  # float32 scores, "3.1234567"

    def describe(self, output):
        return {"similarity": round(float(output), 4)}

    def probabilities(self, outputs):
        return np.asarray(outputs, np.float64)  # a score averages as it is

    def from_probabilities(self, values):
        return values


MULTICLASS, BINARY, REGRESSION = Multiclass(), Binary(), Regression()
SPLITS = ("train", "dev", "test")
_SPLIT_SUFFIX = {"train": "train", "dev": "dev", "test": "test-student"}


class LabelOutOfRange(ValueError):
    """A label that parses but lies outside the task's classes or score range."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task's files and labels."""

    name: str
    kind: TaskKind  # MULTICLASS | BINARY | REGRESSION
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
        return self.kind.is_classification

    @property
    def num_outputs(self) -> int:
        """Width of the head's output: a logit per class, or one logit or score."""
        return self.num_classes if self.kind is MULTICLASS else 1

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

