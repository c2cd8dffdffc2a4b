"""Sequence packing: several examples in each row of a fixed length, with no padding between them.

A packed batch of one task has E example slots (the schedule's batch; filler slots have weight
0 and no tokens) and, per side ("" and, for bi-encoder pairs, "_b"), R rows of L tokens:

  input_ids, token_type_ids [R, L];  position_ids [R, L]: restart at 0 for every example;
  token_example [R, L]: the slot of the example a token belongs to, -1 for padding;
  example_start [E]: the flat index (row x L + column) of each example's first token;
  labels, weights, index, example_ids [E] as in batching.py;  text_key_b [E, 2] (MNRL's tasks):
  a hash of each second text, for the same-text check a padded batch does on the token ids.

The model lets a token attend to its own example's tokens only (a block-diagonal bias), restarts
positions per example and pools each example over its own tokens, so a packed batch computes what
the padded one does (Krell et al. 2021, "Efficient Sequence Packing without Cross-contamination").

Shards. A batch is split over processes, devices and micro-batches into equal consecutive parts
of its rows and of its slots; each part is packed on its own (slots and token indices local to
it), so every part is a packed batch by itself and an example never straddles two devices.

Rows. Training keeps the schedule's examples per step, so a random batch's tokens vary (about
+-15% at batch 32) and so would its rows, each count a compiled program. Instead a pass shares
its records out by length: each window of BALANCE_WINDOW batches, longest record first, goes to
the batch (per shard) with the fewest tokens so far (longest processing time first), so that
batches hold nearly equal tokens (+-1% on the course's files). Then one row shape per task and
side fits them all: the row length (at least the longest record, in steps of ROW_LENGTH_STEP,
up to twice max_length) and row count that first-fit-decreasing needs for a sample of balanced
batches, chosen for the least compute. A batch that does not fit takes the rows it needs (a
second program; rare). Evaluation does not need a fixed example count: its batches are filled to
one fixed shape (rows and slots) in length order, one program per task.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Callable, Iterator, Sequence, Union

import numpy as np

from mtbert_jax.batch import EXAMPLE_START, INPUT_IDS, POSITION_IDS, SIDES, TEXT_KEY_B, TOKEN_EXAMPLE, TOKEN_TYPE_IDS
from mtbert_jax.data.batching import Batch, TaskBatcher
from mtbert_jax.data.tokenized import Segments, TaskData
from mtbert_jax.errors import ConfigError

EVAL_ROW_STEP = 4
BALANCE_WINDOW = 64  # batches whose records are shared out by length together
ROW_LENGTH_STEP = 8
SHAPE_SAMPLE_GROUPS = 256  # balanced shards packed to choose a task's row shape
# A row of L tokens costs about L (1 + L / ATTENTION_COST) tokens of dense layers: attention's
# scores and softmax grow with L (its FLOPs are L / 6d of the dense layers'; on a CPU the softmax
# is memory-bound, so this errs towards shorter rows).
ATTENTION_COST = 1536


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """How records become batches: padded to the shortest of `buckets` that holds them, or
    (packing) packed into rows of the longest bucket's length."""

    buckets: tuple[int, ...]
    packing: bool = False

    @property
    def max_length(self) -> int:
        return self.buckets[-1]

    def batcher(self, data: TaskData, batch_size: int, pad_id: int = 0, unique_texts: bool = False,
                shards: int = 1) -> TaskBatcher:
        if self.packing:
            return PackedBatcher(data, batch_size, self.max_length, pad_id, unique_texts, shards)
        return TaskBatcher(data, batch_size, self.buckets, pad_id, unique_texts)


def as_layout(layout: Union[BatchLayout, Sequence[int]]) -> BatchLayout:
    """A BatchLayout from itself or from bucket lengths (padded batches)."""
    return layout if isinstance(layout, BatchLayout) else BatchLayout(tuple(layout))


def first_fit_decreasing(lengths: np.ndarray, row_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Each sequence's (row, column) when packed into rows of `row_length` tokens, longest
    first, each into the first row with room (at most 11/9 of the fewest rows, plus one)."""
    rows_free: list[int] = []
    row = np.zeros(len(lengths), np.int64)
    column = np.zeros(len(lengths), np.int64)
    for i in np.argsort(-np.asarray(lengths), kind="stable"):
        n = int(lengths[i])
        for r, free in enumerate(rows_free):
            if free >= n:
                break
        else:
            r = len(rows_free)
            rows_free.append(row_length)
        row[i], column[i] = r, row_length - rows_free[r]
        rows_free[r] -= n
    return row, column


def balance_by_length(order: np.ndarray, lengths: np.ndarray, group_size: int, groups_per_batch: int = 1,
                      texts: Callable[[int], list[bytes]] | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Cuts `order` into groups of `group_size` records with nearly equal token sums.

    Each window of BALANCE_WINDOW batches (`groups_per_batch` groups each) hands its records out
    longest first, each to the open group with the fewest tokens so far. With `texts`, no text
    appears twice in a batch: a record goes to the least-loaded group whose batch lacks its
    texts. Returns the groups (whole batches, in order) and the records left over: the last
    part batch, and the batches a text clash left short."""
    batch_records = group_size * groups_per_batch
    cut = len(order) // batch_records * batch_records
    window_records = BALANCE_WINDOW * batch_records
    groups: list[np.ndarray] = []
    left = [order[cut:]]
    for start in range(0, cut, window_records):
        window = order[start:min(start + window_records, cut)]
        k = len(window) // group_size
        load, count = np.zeros(k, np.int64), np.zeros(k, np.int64)
        members: list[list[int]] = [[] for _ in range(k)]
        seen: list[set[bytes]] = [set() for _ in range(k // groups_per_batch)]
        clashed = []
        for i in window[np.argsort(-lengths[window], kind="stable")]:
            open_groups = np.flatnonzero(count < group_size)
            ranked = open_groups[np.argsort(load[open_groups], kind="stable")]
            if texts is None:
                g = ranked[0]
            else:
                mine = texts(i)
                g = next((g for g in ranked if seen[g // groups_per_batch].isdisjoint(mine)), None)
                if g is None:
                    clashed.append(i)
                    continue
                seen[g // groups_per_batch].update(mine)
            members[g].append(i)
            load[g] += lengths[i]
            count[g] += 1
        for b in range(k // groups_per_batch):
            batch = members[b * groups_per_batch:(b + 1) * groups_per_batch]
            if all(len(m) == group_size for m in batch):
                groups += [np.asarray(m, np.int64) for m in batch]
            else:  # a clash left it short: its records go round again
                left.append(np.asarray([i for m in batch for i in m], np.int64))
        left.append(np.asarray(clashed, np.int64))
    return groups, np.concatenate(left).astype(order.dtype)


def row_shape(segments: Sequence[Segments], groups: Sequence[np.ndarray], max_length: int) -> tuple[int, tuple[int, ...]]:
    """(row length, rows per side) that first-fit-decreasing packs every one of `groups` into,
    at the least cost (ATTENTION_COST); the row length is at least the longest record."""
    longest = max(int(s.lengths.max(initial=1)) for s in segments)
    first = -(-longest // ROW_LENGTH_STEP) * ROW_LENGTH_STEP
    best = None
    for length in range(first, max(first, 2 * max_length) + 1, ROW_LENGTH_STEP):
        rows = tuple(max([_rows_needed(s.lengths[g], length) for g in groups] + [1]) for s in segments)
        cost = sum(rows) * length * (1 + length / ATTENTION_COST)
        if best is None or cost < best[0]:
            best = (cost, length, rows)
    return best[1], best[2]


def _rows_needed(lengths: np.ndarray, row_length: int) -> int:
    return int(first_fit_decreasing(lengths, row_length)[0].max(initial=-1)) + 1


def text_key(ids: np.ndarray) -> np.ndarray:
    """[2] int32: a 64-bit hash of a token sequence."""
    return np.frombuffer(hashlib.blake2b(np.ascontiguousarray(ids, np.int32).tobytes(), digest_size=8).digest(),
                         np.int32).copy()


def _fill_side(segments: Segments, indices: np.ndarray, rows: int, row_length: int, slots: int,
               place: tuple[np.ndarray, np.ndarray], pad_id: int) -> dict[str, np.ndarray]:
    """One shard's side: records `indices` in slots 0..n-1 at the given (row, column)s."""
    ids = np.full((rows, row_length), pad_id, np.int32)
    types = np.zeros((rows, row_length), np.int32)
    positions = np.zeros((rows, row_length), np.int32)
    slot_of = np.full((rows, row_length), -1, np.int32)
    start = np.zeros(slots, np.int32)
    for slot, (i, r, c) in enumerate(zip(indices, *place)):
        x, t = segments.get(i)
        ids[r, c:c + len(x)], types[r, c:c + len(x)] = x, t
        positions[r, c:c + len(x)] = np.arange(len(x))
        slot_of[r, c:c + len(x)] = slot
        start[slot] = r * row_length + c
    return {INPUT_IDS: ids, TOKEN_TYPE_IDS: types, POSITION_IDS: positions, TOKEN_EXAMPLE: slot_of,
            EXAMPLE_START: start}


class PackedBatcher(TaskBatcher):
    """Makes packed batches of one task's records: a pass shares a random order of the records
    out into batches of nearly equal tokens (`balance_by_length`), each packed into the task's
    one row shape (`row_shape`, chosen from a sample of such batches)."""

    def __init__(self, data: TaskData, batch_size: int, max_length: int, pad_id: int = 0,
                 unique_texts: bool = False, shards: int = 1):
        super().__init__(data, batch_size, (max_length,), pad_id, unique_texts)
        if batch_size % shards:
            raise ConfigError(f"{data.task}: a batch of {batch_size} does not split into {shards} shards")
        self.max_length, self.shards = max_length, shards
        self.per_shard = batch_size // shards
        self.record_tokens = np.sum([s.lengths for s in data.segments], axis=0)

    @functools.cached_property
    def shape(self) -> tuple[int, tuple[int, ...]]:
        """A training batch's (row length, rows per side), from a sample of balanced shards
        (evaluation batches have rows of max_length)."""
        sample = np.random.default_rng(0).permutation(len(self.data))
        groups, _ = balance_by_length(sample, self.record_tokens, self.per_shard, self.shards)
        return row_shape(self.data.segments, groups[:SHAPE_SAMPLE_GROUPS] or [sample[:self.per_shard]],
                         self.max_length)

    def pass_order(self, rng: np.random.Generator) -> list[np.ndarray]:
        """One shuffled pass in batches of nearly equal tokens, the batches in random order;
        every record appears exactly once (and with unique_texts, no text twice in a batch)."""
        order = rng.permutation(len(self.data))
        groups, left = balance_by_length(order, self.record_tokens, self.per_shard, self.shards,
                                         self._texts if self.unique_texts else None)
        batches = [np.concatenate(groups[i:i + self.shards]) for i in range(0, len(groups), self.shards)]
        if self.unique_texts:
            batches += self._unique_batches(left)
        else:
            batches += [left[i:i + self.batch_size] for i in range(0, len(left), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def make_batch(self, indices: np.ndarray) -> Batch:
        """Records `indices` (at most batch_size) -> a packed batch of batch_size slots."""
        shard_indices = [indices[k * self.per_shard:(k + 1) * self.per_shard] for k in range(self.shards)]
        length, planned = self.shape
        batch: Batch = {}
        for segments, suffix, planned_rows in zip(self.data.segments, SIDES, planned):
            places = [first_fit_decreasing(segments.lengths[ix], length) for ix in shard_indices]
            rows = max([int(p[0].max(initial=-1)) + 1 for p in places] + [planned_rows])
            parts = [_fill_side(segments, ix, rows, length, self.per_shard, p, self.pad_id)
                     for ix, p in zip(shard_indices, places)]
            batch |= {k + suffix: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            self.stats.real_tokens += int(segments.lengths[indices].sum())
            self.stats.padded_tokens += rows * length * self.shards
        self._add_examples(batch, indices)
        return batch

    def _add_examples(self, batch: Batch, indices: np.ndarray, slots: int | None = None) -> None:
        slots = slots or self.batch_size
        batch |= self.example_fields(indices, slots)
        if self.unique_texts:  # MNRL's same-text check (a padded batch compares the token ids)
            keys = np.zeros((slots, 2), np.int32)
            for slot, i in enumerate(indices):
                keys[slot] = text_key(self.data.segments[1].get(i)[0])
            batch[TEXT_KEY_B] = keys

    def by_length(self) -> Iterator[Batch]:
        """Evaluation: every record once, packed into batches of one shape: `eval_rows()` rows
        per side (the tokens of batch_size records of mean length) and twice batch_size slots
        (a slot costs one pooled vector: rows, not slots, should run out). Each batch takes the
        longest records left while they fit, then fills the gaps with the shortest."""
        rows, slots = self.eval_rows(), 2 * self.batch_size
        lengths = [s.lengths for s in self.data.segments]
        order = np.argsort(-np.sum(lengths, axis=0), kind="stable")
        front, back = 0, len(order) - 1  # records order[front..back] are left
        while front <= back:
            free: list[list[int]] = [[] for _ in lengths]  # per side: each open row's free tokens
            places: list[list[tuple[int, int]]] = [[] for _ in lengths]
            taken: list[int] = []
            from_front = True
            while front <= back and len(taken) < slots:
                i = order[front] if from_front else order[back]
                spots = [_first_fit(f, int(n[i]), self.max_length, rows) for f, n in zip(free, lengths)]
                if any(s is None for s in spots):
                    if from_front:
                        from_front = False
                        continue
                    break  # not even the shortest fits: the batch is full
                for f, p, s, n in zip(free, places, spots, lengths):
                    if s[0] == len(f):  # a new row
                        f.append(self.max_length)
                    f[s[0]] -= int(n[i])
                    p.append(s)
                taken.append(i)
                front, back = (front + 1, back) if from_front else (front, back - 1)
            taken_array = np.asarray(taken, np.int64)
            batch: Batch = {}
            for segments, suffix, p in zip(self.data.segments, SIDES, places):
                place = (np.asarray([r for r, _ in p], np.int64), np.asarray([c for _, c in p], np.int64))
                side = _fill_side(segments, taken_array, rows, self.max_length, slots, place, self.pad_id)
                batch |= {k + suffix: v for k, v in side.items()}
                self.stats.real_tokens += int(segments.lengths[taken_array].sum())
                self.stats.padded_tokens += rows * self.max_length
            self._add_examples(batch, taken_array, slots)
            yield batch

    def eval_rows(self) -> int:
        """Rows per side of an evaluation batch: the tokens of batch_size records of the longer
        side's mean length, rounded up to a multiple of EVAL_ROW_STEP, so that the chunks of one
        file (evaluate.py reads large files in chunks) mostly share one shape."""
        mean = max(float(s.lengths.mean()) if len(s) else 1.0 for s in self.data.segments)
        rows = int(np.ceil(self.batch_size * mean / self.max_length))
        return -(-rows // EVAL_ROW_STEP) * EVAL_ROW_STEP


def _first_fit(free: list[int], n: int, row_length: int, rows: int) -> tuple[int, int] | None:
    """(row, column) for n tokens: the first open row with room, else a new row (row ==
    len(free)) while fewer than `rows` are open; None when there is no room."""
    for r, f in enumerate(free):
        if f >= n:
            return r, row_length - f
    return (len(free), 0) if len(free) < rows else None
