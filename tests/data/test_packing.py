"""Packed batches: where every token goes, shards, row counts, evaluation's fixed shape, resume."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from mtbert_jax.data import packing
from mtbert_jax.data.batching import TaskBatcher
from mtbert_jax.data.loader import MultiTaskLoader
from mtbert_jax.data.packing import (
    BatchLayout,
    PackedBatcher,
    balance_by_length,
    first_fit_decreasing,
    row_shape,
    text_key,
)
from mtbert_jax.data.task_schedules import Schedule, ScheduleConfig
from mtbert_jax.data.tokenized import Segments, TaskData


def _data(task="quora", n=40, sides=1, longest=30, seed=0):
    rng = np.random.default_rng(seed)

    def side():
        lengths = rng.integers(2, longest + 1, size=n)
        return Segments.from_lists([rng.integers(5, 100, size=k).astype(np.int32) for k in lengths],
                                   [(np.arange(k) >= k // 2).astype(np.int32) for k in lengths])

    return TaskData(task, "train", np.asarray([f"r{i}" for i in range(n)]),
                    rng.integers(0, 2, size=n).astype(np.int32), tuple(side() for _ in range(sides)), 0, [])


def _unpack(batch, suffix, slots):
    """{slot: (ids, types, positions)} read back from a packed side, checking its bookkeeping."""
    out, row_length = {}, batch["input_ids" + suffix].shape[1]
    for slot in range(slots):
        where = batch["token_example" + suffix] == slot
        rows = np.flatnonzero(where.any(1))
        if len(rows) == 0:
            continue
        assert len(rows) == 1, "an example sits in one row"
        row = rows[0]
        columns = np.flatnonzero(where[row])
        assert (np.diff(columns) == 1).all(), "an example's tokens are contiguous"
        assert batch["example_start" + suffix][slot] == row * row_length + columns[0]
        np.testing.assert_array_equal(batch["position_ids" + suffix][row, columns], np.arange(len(columns)))
        out[slot] = (batch["input_ids" + suffix][row, columns], batch["token_type_ids" + suffix][row, columns])
    return out


def test_first_fit_decreasing_places_without_overlap():
    lengths = np.array([5, 7, 3, 3, 2, 8, 1])  # 29 tokens
    row, column = first_fit_decreasing(lengths, 10)
    assert row.max() + 1 == 3  # the fewest rows of 10 for 29 tokens
    used = np.zeros((3, 10), int)
    for r, c, n in zip(row, column, lengths):
        used[r, c:c + n] += 1
        assert c + n <= 10
    assert used.max() == 1 and used.sum() == lengths.sum()


@pytest.mark.parametrize("sides", [1, 2])
def test_every_token_of_every_example_is_in_its_slot(sides):
    data = _data(sides=sides)
    batcher = PackedBatcher(data, 16, 64, unique_texts=sides == 2)  # MNRL's tasks get text keys
    indices = np.random.default_rng(1).permutation(len(data))[:13]  # 3 filler slots
    batch = batcher.make_batch(indices)
    for segments, suffix in zip(data.segments, ("", "_b")):
        unpacked = _unpack(batch, suffix, 16)
        assert sorted(unpacked) == list(range(13))
        for slot, i in enumerate(indices):
            ids, types = segments.get(i)
            np.testing.assert_array_equal(unpacked[slot][0], ids)
            np.testing.assert_array_equal(unpacked[slot][1], types)
        real = int(segments.lengths[indices].sum())
        assert (batch["token_example" + suffix] >= 0).sum() == real
        length, rows = batcher.shape
        assert batch["input_ids" + suffix].shape == (rows[len(suffix) // 2], length)  # the task's one shape
    np.testing.assert_array_equal(batch["index"][:13], indices)
    assert (batch["index"][13:] == -1).all() and batch["weights"].tolist() == [1.0] * 13 + [0.0] * 3
    np.testing.assert_array_equal(batch["labels"][:13], data.labels[indices])
    if sides == 2:
        assert (batch["text_key_b"][0] == text_key(data.segments[1].get(indices[0])[0])).all()


def test_shards_are_packed_on_their_own_with_equal_rows():
    data = _data(n=64)
    indices = np.arange(24)
    batch = PackedBatcher(data, 24, 64, shards=3).make_batch(indices)
    rows = batch["input_ids"].shape[0] // 3
    for k in range(3):  # each shard is a packed batch of its own 8 examples
        part = {key: v[k * len(v) // 3:(k + 1) * len(v) // 3] for key, v in batch.items()}
        assert part["input_ids"].shape[0] == rows
        unpacked = _unpack(part, "", 8)
        for slot in range(8):
            np.testing.assert_array_equal(unpacked[slot][0], data.segments[0].get(indices[k * 8 + slot])[0])


def test_distillation_fields_follow_their_examples_through_packing_and_shards():
    """A student's altered copies: each slot's targets and gold mark are its own record's,
    whatever row and shard packing put it in; filler slots are neither."""
    labelled, altered = _data(n=32), _data(n=32, seed=1)
    rng = np.random.default_rng(2)
    labelled.targets, altered.targets = rng.random(32, np.float32), rng.random(32, np.float32)
    altered.labels = None
    data = labelled.followed_by_unlabelled(altered)
    indices = np.random.default_rng(3).permutation(64)[:22]  # a last batch: 2 filler slots
    batch = PackedBatcher(data, 24, 64, shards=2).make_batch(indices)
    real = batch["index"] >= 0
    assert real.sum() == 22 and (batch["weights"] == real).all()
    np.testing.assert_array_equal(batch["gold"][real], data.gold[batch["index"][real]])
    np.testing.assert_array_equal(batch["targets"][real], data.targets[batch["index"][real]])
    assert (batch["gold"][~real] == 0).all() and set(batch["gold"][real]) == {0.0, 1.0}
    rows = batch["input_ids"].shape[0] // 2
    for k in range(2):  # and the tokens in each slot are that record's, shard by shard
        part = {key: batch[key][k * rows:(k + 1) * rows] for key in ("input_ids", "token_type_ids", "position_ids",
                                                                    "token_example")}
        part["example_start"] = batch["example_start"][k * 12:(k + 1) * 12]
        for slot, (ids, _) in _unpack(part, "", 12).items():
            np.testing.assert_array_equal(ids, data.segments[0].get(batch["index"][k * 12 + slot])[0])


def test_balanced_groups_hold_every_record_once_with_nearly_equal_tokens(monkeypatch):
    rng = np.random.default_rng(0)
    lengths, order = rng.integers(2, 61, size=1000), rng.permutation(1000)
    monkeypatch.setattr(packing, "BALANCE_WINDOW", 8)  # batches shared out together
    groups, left = balance_by_length(order, lengths, 8, groups_per_batch=4)  # 31 batches of 32
    assert len(groups) == 124 and all(len(g) == 8 for g in groups)
    np.testing.assert_array_equal(left, order[992:])  # the last part batch
    for w in range(4):  # a window's records stay in its batches: the pass stays random
        window = np.concatenate(groups[32 * w:32 * (w + 1)])
        assert sorted(window.tolist()) == sorted(order[256 * w:min(256 * (w + 1), 992)].tolist())
    sums = np.asarray([lengths[g].sum() for g in groups])  # a group: 260 tokens on average
    for w in range(4):  # longest first to the emptiest group: equal within a few tokens
        assert np.ptp(sums[32 * w:32 * (w + 1)]) <= 10
    random_sums = np.asarray([lengths[order[i:i + 8]].sum() for i in range(0, 992, 8)])
    assert random_sums.std() > 4 * sums.std()  # about 50 tokens


def test_balanced_batches_keep_texts_unique():
    rng = np.random.default_rng(1)
    lengths, order = rng.integers(2, 61, size=600), rng.permutation(600)

    def texts(i):  # every text appears 15 or 16 times
        return [b"a%d" % (i % 40), b"b%d" % (i % 37)]

    groups, left = balance_by_length(order, lengths, 8, groups_per_batch=2, texts=texts)
    assert sorted(np.concatenate(groups + [left]).tolist()) == list(range(600))
    for b in range(0, len(groups), 2):
        batch_texts = [t for i in np.concatenate(groups[b:b + 2]) for t in texts(i)]
        assert len(batch_texts) == len(set(batch_texts))
    assert len(left) < 60


def test_row_shape_is_the_cheapest_that_holds_every_group():
    segments = Segments.from_lists([np.ones(10, np.int32)] * 6, [np.zeros(10, np.int32)] * 6)
    # Six records of 10 tokens: rows of 16 hold one (6 rows), of 24 two (3), of 32 three (2 rows,
    # 64 tokens), of 64 all six (1 row of 64, but attention costs more in longer rows).
    assert row_shape([segments], [np.arange(6)], max_length=32) == (32, (2,))
    assert row_shape([segments], [np.arange(3), np.arange(3, 6)], max_length=32) == (32, (1,))


def test_a_pass_packs_into_one_row_shape_with_few_padded_tokens():
    data = _data(n=3000, longest=60)
    batcher = PackedBatcher(data, 32, 64)
    shapes = collections.Counter()
    for p in range(2):
        for indices in batcher.pass_order(np.random.default_rng(p)):
            shapes[batcher.make_batch(indices)["input_ids"].shape] += 1
    length, (rows,) = batcher.shape
    assert shapes[(rows, length)] >= 0.97 * sum(shapes.values())
    assert batcher.stats.efficiency > 0.95
    # The same records in random batches, each packed into the rows it needs: more padding and
    # a program per row count.
    random_batches = PackedBatcher(data, 32, 64)
    random_batches.shape = (64, (1,))
    order = np.random.default_rng(0).permutation(3000)
    counts = {random_batches.make_batch(order[i:i + 32])["input_ids"].shape[0] for i in range(0, 3000, 32)}
    assert len(counts) >= 3 and random_batches.stats.efficiency < batcher.stats.efficiency - 0.02


def test_packing_beats_bucketing_on_real_tokens():
    """Each over one pass in its own order (bucketing groups records by length)."""
    data = _data(n=512, longest=60)
    packed, padded = PackedBatcher(data, 32, 64), TaskBatcher(data, 32, (16, 32, 48, 64))
    for batcher in (packed, padded):
        for indices in batcher.pass_order(np.random.default_rng(0)):
            batcher.make_batch(indices)
    assert packed.stats.efficiency > 0.85 and padded.stats.efficiency < 0.8


def test_evaluation_batches_have_one_shape_and_hold_every_record_once():
    data = _data(n=300, sides=2, longest=40)
    batcher = PackedBatcher(data, 32, 64)
    batches = list(batcher.by_length())
    assert len({(b["input_ids"].shape, b["input_ids_b"].shape, b["weights"].shape) for b in batches}) == 1
    seen = np.concatenate([b["index"][b["weights"] > 0] for b in batches])
    assert sorted(seen.tolist()) == list(range(300))
    for b in batches:
        for segments, suffix in zip(data.segments, ("", "_b")):
            unpacked = _unpack(b, suffix, 64)
            for slot, i in enumerate(b["index"][b["weights"] > 0]):
                np.testing.assert_array_equal(unpacked[slot][0], segments.get(i)[0])
    assert batcher.stats.efficiency > 0.8  # one record per row: 0.33


def test_a_packed_loader_resumes_with_the_same_batches():
    data = {"sst": _data("sst", 50), "quora": _data("quora", 70, sides=2)}
    schedule = Schedule(ScheduleConfig(kind="round_robin", batch_size=8), {t: len(d) for t, d in data.items()}, 2, 0)
    layout = BatchLayout((16, 32), packing=True)

    def loader():
        return MultiTaskLoader(data, schedule, layout, seed=3, shards=2)

    first = loader()
    steps = iter(first)
    for _ in range(5):
        next(steps)
    saved = first.position()
    expected = [next(steps) for _ in range(4)]
    resumed = loader()
    resumed.restore(saved)
    got = [b for _, b in zip(range(4), iter(resumed))]
    for a, b in zip(expected, got):
        assert a.keys() == b.keys()
        for task in a:
            for key in a[task]:
                np.testing.assert_array_equal(a[task][key], b[task][key])
    assert resumed.padding.efficiency == first.padding.efficiency
