"""Length-bucketed, padded batches of one task.

Batches are padded to one of a few fixed lengths (multiples of `bucket_step` up to the max
length), so jitted functions see a bounded set of shapes, and to a fixed number of rows: the
rows that fill a short last batch carry weight 0 and index -1. A batch is a dict of numpy
arrays: input_ids / token_type_ids / attention_mask [batch, seq] (and *_b for the second
sentence of a bi-encoder pair), labels [batch], weights [batch] (1 real, 0 filler), index
[batch] (record index in the file, -1 for filler).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from mtbert_jax.batch import (
    ATTENTION_MASK,
    EXAMPLE_IDS,
    GOLD,
    INDEX,
    INPUT_IDS,
    LABELS,
    SIDES,
    TARGETS,
    TOKEN_TYPE_IDS,
    WEIGHTS,
)
from mtbert_jax.data.tokenized import TaskData
from mtbert_jax.errors import ConfigError

Batch = dict[str, np.ndarray]


def bucket_lengths(max_length: int, step: int = 16) -> tuple[int, ...]:
    """(16, 32, ..., max_length): the padded lengths batches may have."""
    if step <= 0 or max_length <= 0:
        raise ConfigError(f"bucket step {step} and max_length {max_length} must be positive")
    return tuple(range(step, max_length, step)) + (max_length,)


@dataclasses.dataclass
class PaddingStats:
    """Real tokens / padded tokens over the batches made so far."""

    real_tokens: int = 0
    padded_tokens: int = 0

    @property
    def efficiency(self) -> float:
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0


class TaskBatcher:
    """Makes padded batches of one task's records."""

    def __init__(self, data: TaskData, batch_size: int, buckets: tuple[int, ...], pad_id: int = 0,
                 unique_texts: bool = False):
        if batch_size <= 0:
            raise ConfigError(f"{data.task}: batch size must be positive, got {batch_size}")
        longest = int(data.lengths.max(initial=0))
        if longest > buckets[-1]:
            raise ValueError(f"{data.task} {data.split}: a record has {longest} tokens, more than "
                             f"the largest bucket {buckets[-1]}; tokenize with that max length")
        self.data, self.batch_size, self.buckets, self.pad_id = data, batch_size, buckets, pad_id
        self.unique_texts = unique_texts  # in-batch negatives (MNRL): no text twice in a batch
        self.stats = PaddingStats()

    def make_batch(self, indices: np.ndarray) -> Batch:
        """Records `indices` (at most batch_size) -> a batch padded to a bucket length and batch_size rows."""
        rows, n = self.batch_size, len(indices)
        longest = int(self.data.lengths[indices].max(initial=1))
        length = next(b for b in self.buckets if b >= longest)
        batch: Batch = {}
        for segments, suffix in zip(self.data.segments, SIDES):
            ids = np.full((rows, length), self.pad_id, np.int32)
            types = np.zeros((rows, length), np.int32)
            mask = np.zeros((rows, length), np.int32)
            for row, i in enumerate(indices):
                x, t = segments.get(i)
                ids[row, :len(x)], types[row, :len(x)], mask[row, :len(x)] = x, t, 1
            batch |= {INPUT_IDS + suffix: ids, TOKEN_TYPE_IDS + suffix: types,
                      ATTENTION_MASK + suffix: mask}
            self.stats.real_tokens += int(mask[:n].sum())
            self.stats.padded_tokens += rows * length
        return batch | self.example_fields(indices, rows)

    def example_fields(self, indices: np.ndarray, slots: int) -> Batch:
        """Per example, `slots` of them (records `indices` first, then filler): labels, weights
        (1 real, 0 filler), index (record, -1 filler), example_ids (dropout's per-example randomness)."""
        n, fields = len(indices), {}
        if self.data.labels is not None:
            fields[LABELS] = np.zeros(slots, self.data.labels.dtype)
            fields[LABELS][:n] = self.data.labels[indices]
        if self.data.targets is not None:
            fields[TARGETS] = np.zeros((slots,) + self.data.targets.shape[1:], np.float32)
            fields[TARGETS][:n] = self.data.targets[indices]
        if self.data.gold is not None:
            fields[GOLD] = np.zeros(slots, np.float32)
            fields[GOLD][:n] = self.data.gold[indices]
        fields[WEIGHTS] = (np.arange(slots) < n).astype(np.float32)
        fields[INDEX] = np.full(slots, -1, np.int32)
        fields[INDEX][:n] = indices
        fields[EXAMPLE_IDS] = np.arange(slots, dtype=np.int32)
        return fields

    def pass_order(self, rng: np.random.Generator) -> list[np.ndarray]:
        """One shuffled pass: records grouped by bucket (random order within), cut into
        batches, the batches shuffled across buckets. Every record appears exactly once."""
        order = rng.permutation(len(self.data))
        bucket = np.searchsorted(self.buckets, self.data.lengths[order])
        order = order[np.argsort(bucket, kind="stable")]
        if self.unique_texts:
            batches = self._unique_batches(order)
        else:
            batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def _texts(self, i: int) -> list[bytes]:
        return [segments.get(i)[0].tobytes() for segments in self.data.segments]

    def _unique_batches(self, order: np.ndarray) -> list[np.ndarray]:
        """Batches in which no text (of either side of a pair) appears twice: a record whose
        text is already in the batch waits for a later one. Every record still appears once."""
        batches, waiting = [], list(order)
        while waiting:
            batch, seen, deferred = [], set(), []
            for i in waiting:
                texts = self._texts(i)
                if len(batch) < self.batch_size and not seen.intersection(texts):
                    batch.append(i)
                    seen.update(texts)
                else:
                    deferred.append(i)
            batches.append(np.asarray(batch))
            waiting = deferred
        return batches

    def by_length(self) -> Iterator[Batch]:
        """Evaluation: every record once, in batches of similar length (least padding); each
        batch's INDEX says which records it holds, so outputs go back to file order."""
        order = np.argsort(self.data.lengths, kind="stable")
        for start in range(0, len(order), self.batch_size):
            yield self.make_batch(order[start:start + self.batch_size])
