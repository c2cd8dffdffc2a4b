"""Task files tokenized once and cached on disk, as ragged int32 token arrays.

The cache key covers the file's bytes, the tokenizer's vocabulary, the max length and the pair
encoding, so a restarted or second run reads the cache instead of tokenizing again, and any
change to one of them tokenizes afresh. A damaged cache file is said and tokenized again
(mtbert_jax/caches.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Optional

import numpy as np

from mtbert_jax.caches import cached_arrays
from mtbert_jax.checkpoints.tokenizer import BertTextTokenizer
from mtbert_jax.data.task_files import TaskRecords, read_task_file, task_file_paths
from mtbert_jax.errors import DataError
from mtbert_jax.tasks import TASKS

CACHE_DIR_ENV = "MTBERT_CACHE_DIR"
PAIR_ENCODINGS = ("cross", "bi")
# Part of every cache key: raised whenever what a cache file holds changes (today: the arrays with
# their key and digest, mtbert_jax/caches.py, and each pair's separators), so that older files
# are tokenized again, once, instead of misread.
_CACHE_VERSION = 3


@dataclasses.dataclass
class Segments:
    """Ragged token sequences: sequence i is ids[offsets[i]:offsets[i + 1]]."""

    ids: np.ndarray  # [total_tokens] int32
    types: np.ndarray  # [total_tokens] int8
    offsets: np.ndarray  # [n + 1] int64

    @classmethod
    def from_lists(cls, ids: list[np.ndarray], types: list[np.ndarray]) -> "Segments":
        offsets = np.zeros(len(ids) + 1, np.int64)
        np.cumsum([len(x) for x in ids], out=offsets[1:])
        flat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
        return cls(flat(ids, np.int32), flat(types, np.int8), offsets)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def subset(self, keep: np.ndarray) -> "Segments":
        """Sequences `keep`, in that order (one gather, no per-sequence loop)."""
        keep = np.asarray(keep, np.int64)
        lengths = self.lengths[keep]
        offsets = np.zeros(len(keep) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # Token j of new sequence k sits at old offset start[k] + j.
        tokens = np.repeat(self.offsets[keep] - offsets[:-1], lengths) + np.arange(offsets[-1])
        return Segments(self.ids[tokens], self.types[tokens], offsets)

    def swapped_pairs(self, which: Optional[np.ndarray] = None, separators: int = 1) -> "Segments":
        """Cross-encoded pairs with their sentences swapped: `<first> a <separators> b <last>`
        becomes `<first> b <separators> a <last>` (BERT, 1 separator: [CLS] a [SEP] b [SEP];
        MPNet, 2: <s> a </s></s> b </s>), token types following (the same tokens, truncation
        included). `which` [n] bool: swap only those sequences (None: all); every sequence keeps
        its length.

        Token types mark a pair's parts as BERT's do in every family (checkpoints/tokenizer.py):
        0 up to a's separator, 1 from there on, so the second part is `<separators - 1> b <last>`.

        Quora and STS are symmetric relations but a cross-encoder is not: `model.symmetric_pairs`
        averages both orders, `schedule.swap_pairs` trains on both. Swapped sequences must hold
        both segments."""
        lengths = self.lengths
        which = np.ones(len(self), bool) if which is None else np.asarray(which, bool)
        first = np.add.reduceat(self.types == 0, self.offsets[:-1]) if len(self) else np.zeros(0, np.int64)
        first = np.where(lengths > 0, first, 0)  # reduceat reads one element for empty sequences
        second = lengths - first
        not_pairs = which & ((first < 2) | (second < separators))
        if not_pairs.any():
            bad = int(np.flatnonzero(not_pairs)[0])
            raise ValueError(f"sequence {bad} is not a cross-encoded pair with {separators} separator(s) (token "
                             f"types {self.get(bad)[1].tolist()}); only pairs can be swapped")
        la, lb, swap = (np.repeat(x, lengths) for x in (first, second, which))
        a, b = la - 2, lb - separators  # the sentences' own tokens
        j = np.arange(self.offsets[-1]) - np.repeat(self.offsets[:-1], lengths)  # position in its sequence
        # New position j -> old position: the first token, b's tokens, the separators (a's, then
        # the ones opening b), a's tokens, the last token.
        old = np.select([j == 0, j <= b, j <= b + separators, j <= b + separators + a],
                        [0, la + separators - 2 + j, la - 2 + j - b, j - b - separators], default=la + lb - 1)
        tokens = np.repeat(self.offsets[:-1], lengths) + np.where(swap, old, j)
        types = np.where(swap, j >= b + 2, self.types).astype(self.types.dtype)
        return Segments(self.ids[tokens], types, self.offsets.copy())

    def followed_by(self, other: "Segments") -> "Segments":
        """These sequences, then `other`'s."""
        return Segments(np.concatenate([self.ids, other.ids]), np.concatenate([self.types, other.types]),
                        np.concatenate([self.offsets, other.offsets[1:] + self.offsets[-1]]))

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.ids[lo:hi], self.types[lo:hi]


@dataclasses.dataclass
class TaskData:
    """One task split, tokenized: one Segments (a sentence or a cross-encoded pair) or two (bi-encoder)."""

    task: str
    split: str
    record_ids: np.ndarray  # [n] str
    labels: Optional[np.ndarray]  # [n] int32 classes or float32 scores; None when unlabelled
    segments: tuple[Segments, ...]
    num_truncated: int
    skipped: list[tuple[int, str]]  # (line, reason) of records skipped while reading
    # Distillation: the teachers' probabilities or scores per record ([n] or [n, classes]).
    targets: Optional[np.ndarray] = None
    # Separator tokens between a cross-encoded pair's sentences, as the tokenizer's encoder family
    # lays pairs out (BERT 1, MPNet 2): what swapping them inside the tokens needs.
    pair_separators: int = 1
    # [n] bool: False for records that only the teachers' targets teach (distillation's altered
    # copies, whose `labels` entries are placeholders); None: every label is gold.
    gold: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.record_ids)

    def summary(self, first: int = 5) -> str:
        """One line for the run's log: records, skipped records (first lines), truncated records."""
        text = f"{self.task} {self.split}: {len(self)} records, {self.num_truncated} truncated"
        if self.gold is not None:
            text += f" ({int(self.gold.sum())} labelled, {int((~self.gold).sum())} altered copies)"
        if self.skipped:
            shown = "; ".join(f"line {line}: {why}" for line, why in self.skipped[:first])
            more = f"; and {len(self.skipped) - first} more" if len(self.skipped) > first else ""
            text += f", {len(self.skipped)} skipped ({shown}{more})"
        return text

    @property
    def lengths(self) -> np.ndarray:
        """[n] the longest segment of each record: what its padded length must hold."""
        return np.max([s.lengths for s in self.segments], axis=0)

    def swapped(self, which: Optional[np.ndarray] = None) -> "TaskData":
        """A pair task's records with each pair's two sentences swapped (cross-encoded: within
        the sequence; bi-encoded: the two segments change places). `which` [n] bool: only those
        records (cross-encoded pairs only, whose lengths stay as they are; None: all)."""
        if not TASKS[self.task].is_pair:
            raise ValueError(f"{self.task} is not a pair task: there is nothing to swap")
        if len(self.segments) == 1:
            return dataclasses.replace(self, segments=(self.segments[0].swapped_pairs(which, self.pair_separators),))
        if which is not None:
            raise ValueError("bi-encoded pairs are swapped all together, not record by record")
        return dataclasses.replace(self, segments=self.segments[::-1])

    def subset(self, keep: np.ndarray) -> "TaskData":
        """The records at indices `keep`, in that order."""
        segments = tuple(s.subset(keep) for s in self.segments)
        labels = None if self.labels is None else self.labels[keep]
        targets = None if self.targets is None else self.targets[keep]
        gold = None if self.gold is None else self.gold[keep]
        return dataclasses.replace(self, record_ids=self.record_ids[keep], labels=labels, segments=segments,
                                   targets=targets, gold=gold)

    def followed_by_unlabelled(self, other: "TaskData") -> "TaskData":
        """These labelled records, then `other`'s unlabelled ones, which train on their teacher
        targets alone (`gold` says which are which). Both need targets, and the same segments."""
        if self.labels is None or other.labels is not None:
            raise ValueError("followed_by_unlabelled: labelled records first, then unlabelled ones")
        if self.targets is None or other.targets is None:
            raise ValueError("followed_by_unlabelled: both parts need teacher targets")
        if len(self.segments) != len(other.segments) or self.pair_separators != other.pair_separators:
            raise ValueError(f"followed_by_unlabelled: {len(self.segments)} segments with {self.pair_separators} "
                             f"pair separator(s) against {len(other.segments)} with {other.pair_separators}")
        if other.gold is not None:
            raise ValueError("followed_by_unlabelled: the records to append are already a mix")
        gold = np.ones(len(self), bool) if self.gold is None else self.gold
        return dataclasses.replace(
            self, record_ids=np.concatenate([self.record_ids, other.record_ids]),
            labels=np.concatenate([self.labels, np.zeros(len(other), self.labels.dtype)]),
            segments=tuple(a.followed_by(b) for a, b in zip(self.segments, other.segments)),
            num_truncated=self.num_truncated + other.num_truncated,
            targets=np.concatenate([self.targets, other.targets]).astype(np.float32),
            gold=np.concatenate([gold, np.zeros(len(other), bool)]))


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mtbert_jax"


def tokenize_records(records, tokenizer: BertTextTokenizer, max_length: int,
                     pair_encoding: str = "cross"):
    """TaskRecords -> (segments, number of records truncated)."""
    if pair_encoding not in PAIR_ENCODINGS:
        raise ValueError(f"pair_encoding={pair_encoding!r}: expected one of {PAIR_ENCODINGS}")
    if len(records.texts) == 1 or pair_encoding == "cross":
        pairs = records.texts[1] if len(records.texts) == 2 else None
        tokenized = [tokenizer.tokenize(records.texts[0], pairs, max_length)]
    else:
        tokenized = [tokenizer.tokenize(column, None, max_length) for column in records.texts]
    segments = tuple(Segments.from_lists(t.input_ids, t.token_type_ids) for t in tokenized)
    # A record counts once even when both of its sentences were cut.
    truncated = np.logical_or.reduce([t.truncated for t in tokenized])
    return segments, int(truncated.sum())


def load_task_data(task: str, split: str, data_dir: str | Path, tokenizer: BertTextTokenizer,
                   max_length: int = 128, pair_encoding: str = "cross",
                   cache_dir: Optional[str | Path] = None, path: Optional[str | Path] = None,
                   ) -> TaskData:
    """Reads (training files leniently) and tokenizes a task split, through the on-disk cache.

    `path` overrides the file's location (any file in the task's format).
    """
    path = Path(path) if path is not None else task_file_paths(data_dir, [task], split)[task]
    pair_encoding = pair_encoding if TASKS[task].is_pair else "cross"
    key = hashlib.sha256(repr((
        _CACHE_VERSION, hashlib.sha256(path.read_bytes()).hexdigest(), tokenizer.fingerprint,
        max_length, pair_encoding, split == "train")).encode()).hexdigest()[:20]
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_file = cache_dir / f"{task}-{split}-{key}.npz"

    def tokenize() -> dict[str, np.ndarray]:
        records = read_task_file(path, task, lenient=(split == "train"))
        if split in ("train", "dev") and records.labels is None:
            raise DataError(f"{path}: line 1: no {TASKS[task].label_column!r} column, which a {split} file needs")
        if not records.record_ids:
            skipped = f" ({len(records.skipped)} skipped as malformed, the first at line {records.skipped[0][0]})" \
                if records.skipped else ""
            raise DataError(f"{path}: no {task} records after the header{skipped}")
        return _as_arrays(records_data(records, split, tokenizer, max_length, pair_encoding))

    return _from_arrays(cached_arrays(cache_file, key, tokenize), task, split)


def records_data(records: TaskRecords, split: str, tokenizer: BertTextTokenizer, max_length: int,
                 pair_encoding: str = "cross") -> TaskData:
    """Records read from a file or made (distillation's altered copies), tokenized."""
    segments, num_truncated = tokenize_records(records, tokenizer, max_length, pair_encoding)
    return TaskData(records.task, split, np.asarray(records.record_ids, dtype=str), records.labels, segments,
                    num_truncated, records.skipped, pair_separators=tokenizer.family.pair_separators)


def _as_arrays(data: TaskData) -> dict[str, np.ndarray]:
    arrays = {"record_ids": data.record_ids, "num_truncated": np.int64(data.num_truncated),
              "skipped_lines": np.asarray([s[0] for s in data.skipped], np.int64),
              "skipped_reasons": np.asarray([s[1] for s in data.skipped], dtype=str),
              "pair_separators": np.int64(data.pair_separators)}
    if data.labels is not None:
        arrays["labels"] = data.labels
    for k, seg in enumerate(data.segments):
        arrays |= {f"ids_{k}": seg.ids, f"types_{k}": seg.types, f"offsets_{k}": seg.offsets}
    return arrays


def _from_arrays(z: dict[str, np.ndarray], task: str, split: str) -> TaskData:
    segments = []
    while f"ids_{len(segments)}" in z:
        k = len(segments)
        segments.append(Segments(z[f"ids_{k}"], z[f"types_{k}"], z[f"offsets_{k}"]))
    return TaskData(task, split, z["record_ids"], z.get("labels"), tuple(segments), int(z["num_truncated"]),
                    list(zip(z["skipped_lines"].tolist(), z["skipped_reasons"].tolist())),
                    pair_separators=int(z["pair_separators"]))
