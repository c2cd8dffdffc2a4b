"""Carries out a schedule: per-task streams of bucketed batches, stepped through epoch by epoch.

Each task's stream goes through its records in shuffled passes (pass p of task t is shuffled
by a generator seeded with (seed, t, p)); a task that runs out in an epoch starts its next pass
(all_tasks_until_largest's cycling, oversampling). Under all_tasks_until_smallest each epoch
starts every task's next pass instead, discarding what the last epoch left (unless
schedule.carry_over_passes). All randomness is seeded from positions, so the loader's state is a handful of integers: `state_dict()` after any step and `load_state_dict()` in a new
process continue with exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence, Union

import numpy as np

from mtbert_jax.data.batching import Batch, PaddingStats, TaskBatcher
from mtbert_jax.data.packing import BatchLayout, as_layout
from mtbert_jax.data.task_schedules import Schedule
from mtbert_jax.data.tokenized import TaskData
from mtbert_jax.errors import ConfigError
from mtbert_jax.tasks import TASKS


class _TaskStream:
    def __init__(self, batcher: TaskBatcher, seed: int, task_index: int, swap_pairs: bool = False):
        self.batcher, self.seed, self.task_index = batcher, seed, task_index
        self.pass_index, self.position = 0, 0
        self._order: list[np.ndarray] | None = None
        # schedule.swap_pairs: each pass takes a random half of the pairs in the other order.
        self._original, self.swap_pairs = batcher.data, swap_pairs

    def _current_order(self) -> list[np.ndarray]:
        if self._order is None:
            rng = np.random.default_rng([self.seed, self.task_index, self.pass_index])
            self._order = self.batcher.pass_order(rng)
            if self.swap_pairs:
                swap_rng = np.random.default_rng([self.seed, self.task_index, self.pass_index, 1])
                self.batcher.data = self._original.swapped(swap_rng.random(len(self._original)) < 0.5)
        return self._order

    def next_batch(self) -> Batch:
        batch = self.batcher.make_batch(self._current_order()[self.position])
        self.position += 1
        if self.position == len(self._order):
            self.pass_index, self.position, self._order = self.pass_index + 1, 0, None
        return batch

    def state(self) -> tuple[int, int]:
        return self.pass_index, self.position

    def restore(self, pass_index: int, position: int) -> None:
        self.pass_index, self.position, self._order = pass_index, position, None

    def start_next_pass(self) -> None:
        """Discards the rest of the current pass (nothing to do at a pass's start)."""
        if self.position:
            self.restore(self.pass_index + 1, 0)


class MultiTaskLoader:
    """Yields, step by step, {task: batch} for the tasks the schedule puts in each step.

    `layout`: bucket lengths (padded batches) or a BatchLayout (packed ones); `shards`: the
    parts (processes x devices x micro-batches) a packed batch is split into, each packed on
    its own.
    """

    def __init__(self, datasets: Mapping[str, TaskData], schedule: Schedule,
                 layout: Union[BatchLayout, Sequence[int]], seed: int = 0, pad_id: int = 0,
                 unique_text_tasks: tuple[str, ...] = (), shards: int = 1):
        missing = set(schedule.tasks) - set(datasets)
        if missing:
            raise ConfigError(f"the schedule trains {sorted(missing)} but no data was given for them")
        sizes = schedule.batch_sizes()
        self.schedule = schedule
        layout = as_layout(layout)
        self.streams = {t: _TaskStream(layout.batcher(datasets[t], sizes[t], pad_id, t in unique_text_tasks, shards),
                                       seed, i, schedule.config.swap_pairs and TASKS[t].is_pair)
                        for i, t in enumerate(sorted(datasets)) if t in schedule.tasks}
        self.epoch, self.step = 0, 0
        self._plan_epoch, self._plan = None, None

    def plan(self, epoch: int) -> list[tuple[str, ...]]:
        if self._plan_epoch != epoch:
            self._plan_epoch, self._plan = epoch, self.schedule.plan(epoch)
        return self._plan

    def steps_in_epoch(self, epoch: int | None = None) -> int:
        return len(self.plan(self.epoch if epoch is None else epoch))

    def __iter__(self) -> Iterator[dict[str, Batch]]:
        """The remaining steps of the current epoch; afterwards the loader is at the next epoch."""
        plan = self.plan(self.epoch)
        if self.step == 0 and self.schedule.restarts_streams:
            for stream in self.streams.values():
                stream.start_next_pass()
        while self.step < len(plan):
            tasks = plan[self.step]
            batches = {t: self.streams[t].next_batch() for t in tasks}
            self.step += 1
            yield batches
        self.epoch, self.step = self.epoch + 1, 0

    def end_epoch_early(self) -> None:
        """Moves to the next epoch's start when training stops mid-epoch (max_steps ended a
        stage), so that the next stage and a resumed run start from a whole epoch."""
        if self.step != 0:
            self.epoch, self.step = self.epoch + 1, 0

    @property
    def padding(self) -> PaddingStats:
        total = PaddingStats()
        for stream in self.streams.values():
            total.real_tokens += stream.batcher.stats.real_tokens
            total.padded_tokens += stream.batcher.stats.padded_tokens
        return total

    def padding_state(self) -> dict[str, list[int]]:
        """Real and padded tokens batched so far per task (JSON), so that a resumed run goes on
        reporting the padding efficiency of the whole run, as an uninterrupted one does."""
        return {task: [stream.batcher.stats.real_tokens, stream.batcher.stats.padded_tokens]
                for task, stream in self.streams.items()}

    def load_padding_state(self, state: Mapping[str, list[int]]) -> None:
        for task, (real, padded) in state.items():
            self.streams[task].batcher.stats = PaddingStats(int(real), int(padded))

    def position(self) -> dict:
        """Where the loader is (its state and the padding counted so far): a snapshot to save
        or to go back to."""
        return {"state": self.state_dict(), "padding": self.padding_state()}

    def restore(self, position: Mapping) -> None:
        self.load_state_dict(position["state"])
        self.load_padding_state(position["padding"])

    def state_dict(self) -> dict[str, np.ndarray]:
        """Position in training, as int arrays (fit for a checkpoint)."""
        state = {"epoch": np.asarray(self.epoch, np.int64), "step": np.asarray(self.step, np.int64)}
        for task, stream in self.streams.items():
            state[f"stream_{task}"] = np.asarray(stream.state(), np.int64)
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        for task, stream in self.streams.items():
            stream.restore(*(int(x) for x in state[f"stream_{task}"]))
