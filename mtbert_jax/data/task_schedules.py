"""Multi-task schedules: which tasks train in each step of each epoch, and with what batch size.

A schedule only plans (it sees dataset sizes, never data); `loader.py` carries a plan out. Plans are a pure function of (config, sizes, seed, epoch), so a resumed run re-plans the
same epoch exactly.

Kinds (see ../shared/docs/algorithms.md; n_t = batches in task t's epoch share):
- sequential:   every batch of task 1, then task 2, ... (one task per step)
- round_robin:  one task per step, cycling, until the largest task has done its n_t steps
- all_tasks_scaled_batches: all tasks every step; ceil(N_max / B) steps; task t's batch
                ceil(N_t / steps); loss_t weighted by (sum of the other tasks' batch sizes) /
                (t's batch size)
- all_tasks_until_largest: all tasks every step, equal batches, until the largest is exhausted
                (the others cycle)
- all_tasks_until_smallest: all tasks every step, equal batches, until the smallest is
                exhausted; each epoch restarts every task's pass, discarding the rest of the
                larger tasks (seed 001), unless carry_over_passes continues where the last
                epoch stopped
Seed 001's report calls these three Methods 1, 2 and 3: `method1`..`method3` are accepted as
aliases (saved configs, the command line) and stored under the names above.
- proportional / sqrt / annealed: one task per step, sampled with p_t ~ N_t^alpha, alpha = 1,
                0.5, or 1 - 0.8 (e - 1) / (E - 1) in epoch e of E; sum n_t steps per epoch
Modifiers: task_weights (N_t -> w_t N_t; 0 removes a task), oversample_max k (a smaller task
grows to min(k N_t, N_max)), iterations_multiplier (steps per epoch times m), curriculum_epochs c
with curriculum "largest_first" (the first c epochs train only the task with the most records,
judged before oversampling, then all) or "one_by_one" (tasks join largest first, one more every
c epochs: seed 004's "gradually introduced").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np

from mtbert_jax.errors import ConfigError
from mtbert_jax.tasks import TASKS

ALL_TASK_KINDS = ("all_tasks_scaled_batches", "all_tasks_until_largest", "all_tasks_until_smallest")
KIND_ALIASES = dict(zip(("method1", "method2", "method3"), ALL_TASK_KINDS))  # seed 001's names
SAMPLED_KINDS = {"proportional": 1.0, "sqrt": 0.5, "annealed": None}
CURRICULA = ("largest_first", "one_by_one")
KINDS = ("sequential", "round_robin") + ALL_TASK_KINDS + tuple(SAMPLED_KINDS)

Step = tuple[str, ...]  # the tasks that train in one step


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """The multi-task schedule. These defaults are the run's (configs/default.py builds its
    `schedule` section from them)."""

    # sequential | round_robin | all_tasks_scaled_batches | all_tasks_until_largest |
    # all_tasks_until_smallest | proportional | sqrt | annealed (see above; method1..method3,
    # seed 001's names for the all_tasks_* kinds, are read as aliases).
    kind: str = "sqrt"
    # Records per task batch (every device of every process gets an equal share).
    batch_size: int = 32
    # N_t -> w_t N_t when planning (0 removes a task); weights of untrained tasks are ignored.
    task_weights: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"sst": 1.0, "quora": 1.0, "sts": 1.0})
    # A smaller task is oversampled up to this factor (never past the largest task).
    oversample_max: float = 1.0
    # Steps per epoch times this factor (seed 002: 3x the smallest task's epoch).
    iterations_multiplier: float = 1.0
    # Curriculum: epochs per stage, 0 for none (seed 004: Quora first).
    curriculum_epochs: int = 0
    # largest_first: those epochs train the largest task alone, then all; one_by_one: tasks join
    # largest first, one more every curriculum_epochs epochs (seed 004's gradual introduction).
    curriculum: str = "largest_first"
    # all_tasks_until_smallest starts every task's pass afresh each epoch, discarding the rest
    # (seed 001); True continues each task where the last epoch stopped, so that over epochs all
    # data is seen.
    carry_over_passes: bool = False
    # Each pass of a cross-encoded pair task (Quora, STS) takes a random half of its pairs with
    # the two sentences swapped: the relations are symmetric, a cross-encoder is not.
    swap_pairs: bool = False

    def __post_init__(self):
        object.__setattr__(self, "task_weights", dict(self.task_weights or {}))
        object.__setattr__(self, "kind", KIND_ALIASES.get(self.kind, self.kind))
        if self.kind not in KINDS:
            raise ConfigError(f"schedule.kind={self.kind!r}: expected one of {KINDS} (or {tuple(KIND_ALIASES)})")
        if self.curriculum not in CURRICULA:
            raise ConfigError(f"schedule.curriculum={self.curriculum!r}: expected one of {CURRICULA}")
        for name, value, ok, expected in (
                ("batch_size", self.batch_size, self.batch_size > 0, "> 0"),
                ("oversample_max", self.oversample_max, self.oversample_max >= 1, ">= 1"),
                ("iterations_multiplier", self.iterations_multiplier, self.iterations_multiplier > 0, "> 0"),
                ("curriculum_epochs", self.curriculum_epochs, self.curriculum_epochs >= 0, ">= 0")):
            if not ok:
                raise ConfigError(f"schedule.{name}={value}: expected {expected}")
        unknown = sorted(set(self.task_weights) - set(TASKS))
        if unknown:
            raise ConfigError(f"schedule.task_weights names unknown task(s) {unknown}: expected some of {sorted(TASKS)}")
        if any(w < 0 for w in self.task_weights.values()):
            raise ConfigError(f"schedule.task_weights must be >= 0, got {self.task_weights}")


class Schedule:
    """Plans the steps of every epoch for tasks of the given sizes (records per task)."""

    def __init__(self, config: ScheduleConfig, sizes: Mapping[str, int], num_epochs: int, seed: int = 0):
        weights = {t: w for t, w in config.task_weights.items() if t in sizes}
        effective = {t: n * weights.get(t, 1.0) for t, n in sizes.items()}
        effective = {t: n for t, n in effective.items() if n > 0}
        if not effective:
            raise ConfigError(f"schedule: no task left to train (sizes {dict(sizes)}, weights {weights})")
        largest = max(effective.values())
        # The curriculum's order: largest first, judged before oversampling, which can raise a
        # small task to the largest's size (seed 004: SST x5 ties with Quora).
        self.curriculum_order = tuple(sorted(effective, key=lambda t: -effective[t]))
        self.curriculum_task = self.curriculum_order[0]
        self.sizes = {t: int(math.ceil(max(n, min(config.oversample_max * n, largest))))
                      for t, n in effective.items()}
        self.config, self.num_epochs, self.seed = config, num_epochs, seed
        self.tasks = tuple(self.sizes)

    @property
    def all_tasks_per_step(self) -> bool:
        """Whether every step holds a batch of every task (what PCGrad needs)."""
        return self.config.kind in ALL_TASK_KINDS

    @property
    def restarts_streams(self) -> bool:
        """Whether each epoch starts every task's pass afresh (all_tasks_until_smallest: the rest is
        discarded)."""
        return self.config.kind == "all_tasks_until_smallest" and not self.config.carry_over_passes

    def active_tasks(self, epoch: int) -> tuple[str, ...]:
        c = self.config.curriculum_epochs
        if not c:
            return self.tasks
        if self.config.curriculum == "one_by_one":
            joined = set(self.curriculum_order[:1 + epoch // c])
            return tuple(t for t in self.tasks if t in joined)
        return (self.curriculum_task,) if epoch < c else self.tasks

    def batch_sizes(self, epoch: int = -1) -> dict[str, int]:
        """Per-task batch size (all_tasks_scaled_batches: proportional to the task's size)."""
        tasks = self.active_tasks(epoch) if epoch >= 0 else self.tasks
        b = self.config.batch_size
        if self.config.kind != "all_tasks_scaled_batches":
            return {t: b for t in self.tasks}
        steps = math.ceil(max(self.sizes[t] for t in tasks) / b)
        return {t: math.ceil(self.sizes[t] / steps) for t in self.tasks}

    def loss_weights(self, epoch: int = -1) -> dict[str, float]:
        """all_tasks_scaled_batches: loss_t * (sum of the other tasks' batch sizes) / (t's batch
        size); else 1."""
        tasks = self.active_tasks(epoch) if epoch >= 0 else self.tasks
        if self.config.kind != "all_tasks_scaled_batches" or len(tasks) == 1:
            return {t: 1.0 for t in self.tasks}
        sizes = self.batch_sizes(epoch)
        total = sum(sizes[t] for t in tasks)
        return {t: (total - sizes[t]) / sizes[t] for t in self.tasks}

    def alpha(self, epoch: int) -> float:
        """The sampling exponent in (0-based) epoch `epoch`."""
        fixed = SAMPLED_KINDS[self.config.kind]
        if fixed is not None:
            return fixed
        return 1.0 if self.num_epochs <= 1 else 1.0 - 0.8 * epoch / (self.num_epochs - 1)

    def probabilities(self, epoch: int) -> dict[str, float]:
        tasks = self.active_tasks(epoch)
        mass = np.array([self.sizes[t] for t in tasks], np.float64) ** self.alpha(epoch)
        return dict(zip(tasks, (mass / mass.sum()).tolist()))

    def plan(self, epoch: int) -> list[Step]:
        """The steps of (0-based) epoch `epoch`."""
        kind, tasks = self.config.kind, self.active_tasks(epoch)
        sizes = self.batch_sizes(epoch)
        batches = {t: math.ceil(self.sizes[t] / sizes[t]) for t in tasks}
        if kind == "sequential":
            base = [(t,) for t in tasks for _ in range(batches[t])]
        elif kind == "round_robin":
            base = [(tasks[i % len(tasks)],) for i in range(len(tasks) * max(batches.values()))]
        elif kind == "all_tasks_scaled_batches":
            base = [tasks] * math.ceil(max(self.sizes[t] for t in tasks) / self.config.batch_size)
        elif kind == "all_tasks_until_largest":
            base = [tasks] * max(batches.values())
        elif kind == "all_tasks_until_smallest":
            base = [tasks] * min(batches.values())
        else:
            count = round(sum(batches.values()) * self.config.iterations_multiplier)
            rng = np.random.default_rng([self.seed, 7, epoch])
            p = self.probabilities(epoch)
            picks = rng.choice(len(tasks), size=count, p=[p[t] for t in tasks])
            return [(tasks[i],) for i in picks]
        count = round(len(base) * self.config.iterations_multiplier)
        return [base[i % len(base)] for i in range(count)]
