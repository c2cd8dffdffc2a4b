"""Training stages: fine-tuning for `num_epochs`, then `frozen_epochs` with the encoder frozen
(seed 003's extra training). Each stage has its own optimizer (fresh state, a learning-rate
schedule over the stage's own steps); a frozen encoder is not differentiated at all.
`max_steps` cuts the stages short, with the schedules fitted to the cut.
"""

from __future__ import annotations

import dataclasses

import jax

from mtbert_jax.data.loader import MultiTaskLoader
from mtbert_jax.data.task_schedules import Schedule
from mtbert_jax.model.multitask import MultiTaskModel
from mtbert_jax.run.config import RunConfig
from mtbert_jax.training.optimizer import Optimizer
from mtbert_jax.training.step import StepRunner, TrainState

FINE_TUNING, FROZEN_ENCODER = 0, 1


class Stages:
    def __init__(self, run: RunConfig, schedule: Schedule, loader: MultiTaskLoader,
                 model: MultiTaskModel, params: dict, pcgrad_key: jax.Array):
        self.run, self.model, self.params, self.pcgrad_key = run, model, params, pcgrad_key
        total_epochs = run.num_epochs + run.frozen_epochs
        steps_per_epoch = [loader.steps_in_epoch(e) for e in range(total_epochs)]
        self.planned_steps = sum(steps_per_epoch)
        self.ends = [sum(steps_per_epoch[:run.num_epochs]), self.planned_steps]  # cumulative
        if run.max_steps:
            self.ends = [min(end, run.max_steps) for end in self.ends]
        self.tasks = tuple(t for t in run.model.tasks if t in schedule.tasks)  # PCGrad's task order
        self.tasks_per_step = len(self.tasks) if schedule.all_tasks_per_step else 1
        # all_tasks_scaled_batches weighs each task's loss by the other tasks' share of the step.
        self.loss_weights = (schedule.loss_weights() if run.schedule.kind == "all_tasks_scaled_batches"
                             else run.task_loss_weights(self.tasks))

    @property
    def last_step(self) -> int:
        return self.ends[-1]

    def stage_at(self, epoch: int, step: int) -> int:
        return FINE_TUNING if epoch < self.run.num_epochs and step < self.ends[0] else FROZEN_ENCODER

    def build(self, stage: int) -> tuple[Optimizer, StepRunner]:
        config = self.run.optimizer
        if stage == FROZEN_ENCODER:
            config = dataclasses.replace(config, freeze_encoder=True)
        steps = self.ends[0] if stage == FINE_TUNING else self.ends[1] - self.ends[0]
        optimizer = Optimizer(config, self.params, self.tasks, max(steps, 1), self.tasks_per_step, self.pcgrad_key)
        runner = StepRunner(self.model, optimizer, self.tasks, self.loss_weights, self.run.accumulation_steps,
                            objective=self.run.objective, total_steps=self.last_step,
                            frozen=("bert",) if config.freeze_encoder else ())
        return optimizer, runner

    def initial_state(self, optimizer: Optimizer) -> TrainState:
        return TrainState.create(self.params, optimizer, self.run.objective.needs_teacher)

    def start_stage(self, optimizer: Optimizer, state: TrainState, step: int) -> TrainState:
        """The state at the start of a new stage: same parameters, teacher and average, fresh
        optimizer."""
        return state._replace(opt_state=optimizer.init(state.params), step=jax.numpy.asarray(step, jax.numpy.int32))
