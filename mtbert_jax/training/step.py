"""The data-parallel train step: per-task loss-and-gradient functions, then one update.

Per task, a pmapped function computes the gradient of that task's loss on its batch (split on
a leading device axis), summed over micro-batches (gradient accumulation) and over devices
(psum), and divided by the number of real examples: exactly the gradient of the mean loss over
the global batch, so 1 device and N devices, or accumulation 1 and k, take the same step. It
is compiled once per task and batch shape. The per-task gradients of a step are stacked on a
leading task axis and handed to the optimizer chain ([task combiner] -> clip -> AdamW) in one
pmapped update, compiled once per number of tasks in a step.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from mtbert_jax.model.multitask import MultiTaskModel
from mtbert_jax.training.objectives import ObjectiveConfig, make_objective
from mtbert_jax.training.optimizer import Optimizer
from mtbert_jax.training.smart import update_teacher

AXIS = "devices"
PyTree = Any


class TrainState(NamedTuple):
    params: PyTree
    opt_state: PyTree
    step: jax.Array  # int32 scalar: updates done so far
    teacher: PyTree = None  # SMART's moving average of the parameters, when SMART is on

    @classmethod
    def create(cls, params: PyTree, optimizer: Optimizer, with_teacher: bool = False,
               step: int = 0) -> "TrainState":
        """Fresh optimizer state; the teacher (when wanted) starts as a copy of the parameters."""
        return cls(params, optimizer.init(params), jnp.asarray(step, jnp.int32),
                   params if with_teacher else None)


def make_task_grad(model: MultiTaskModel, task: str, task_index: int, accumulation: int = 1,
                   deterministic: bool = False, objective: Optional[ObjectiveConfig] = None,
                   frozen: Sequence[str] = ()) -> Callable:
    """pmapped (params, teacher, batch, step, key) -> (gradient of the mean loss, mean loss, real rows).

    params (and SMART's teacher, or None) are replicated, batch leaves are [devices, rows, ...]
    with rows divisible by `accumulation`; step and key are shared. Dropout keys are folded per
    step, task, device and micro-batch. `frozen` names top-level parameter groups (such as
    "bert") that are not differentiated: their gradient is returned as zeros without being
    computed (with heads only, the backward pass stops at the frozen encoder's output).
    """
    loss_sum = make_objective(model, task, objective or ObjectiveConfig(), deterministic)
    frozen = tuple(frozen)

    def loss_of_trainable(trainable, fixed, teacher, batch, key):
        return loss_sum({**trainable, **fixed}, teacher, batch, key)

    grad_of_trainable = jax.value_and_grad(loss_of_trainable, has_aux=True)

    def value_and_grad(params, teacher, batch, key):
        trainable = {k: v for k, v in params.items() if k not in frozen}
        fixed = {k: jax.lax.stop_gradient(params[k]) for k in frozen if k in params}
        value, grad = grad_of_trainable(trainable, fixed, teacher, batch, key)
        return value, {**grad, **jax.tree_util.tree_map(jnp.zeros_like, fixed)}

    def per_device(params, teacher, batch, step, key):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, step), task_index),
                                 jax.lax.axis_index(AXIS))
        rows = batch["weights"].shape[0]
        micro = jax.tree_util.tree_map(
            lambda x: x.reshape((accumulation, rows // accumulation) + x.shape[1:]), batch)

        def accumulate(totals, inputs):
            index, mb = inputs
            (loss, count), grad = value_and_grad(params, teacher, mb, jax.random.fold_in(key, index))
            total_grad, total_loss, total_count = totals
            return (jax.tree_util.tree_map(jnp.add, total_grad, grad), total_loss + loss,
                    total_count + count), None

        if accumulation == 1:  # no zero-filled accumulators: a full pass over the params saved
            (loss, count), grad = value_and_grad(params, teacher, batch, jax.random.fold_in(key, 0))
            totals = (grad, loss, count)
        else:
            zeros = (jax.tree_util.tree_map(jnp.zeros_like, params), jnp.zeros(()), jnp.zeros(()))
            totals, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(accumulation), micro))
        grad, loss, count = jax.lax.psum(totals, AXIS)
        denominator = jnp.maximum(count, 1.0)
        return jax.tree_util.tree_map(lambda g: g / denominator, grad), loss / denominator, count

    return jax.pmap(per_device, axis_name=AXIS, in_axes=(0, 0, 0, None, None))


def make_update(optimizer: Optimizer, total_steps: int = 1) -> Callable:
    """pmapped (state, per-task gradients, loss weights [T]) -> (state, metrics).

    The gradients (a tuple, one tree per task, already averaged over devices) are weighted,
    stacked on a leading task axis and handed to the optimizer, which makes the whole update.
    """

    def per_device(state: TrainState, grads: Sequence[PyTree], loss_weights: jax.Array):
        stacked = jax.tree_util.tree_map(
            lambda *g: jnp.stack(g) * loss_weights.reshape((-1,) + (1,) * g[0].ndim), *grads)
        params, opt_state, metrics = optimizer.update(stacked, state.opt_state, state.params)
        teacher = state.teacher
        if teacher is not None:
            teacher = update_teacher(teacher, params, state.step, total_steps)
        return TrainState(params, opt_state, state.step + 1, teacher), metrics

    return jax.pmap(per_device, axis_name=AXIS, donate_argnums=(0,))


class StepRunner:
    """Runs steps: {task: device-split batch} -> per-task gradients -> update."""

    def __init__(self, model: MultiTaskModel, optimizer: Optimizer, tasks: Sequence[str],
                 loss_weights: Mapping[str, float], accumulation: int = 1, deterministic: bool = False,
                 objective: Optional[ObjectiveConfig] = None, total_steps: int = 1,
                 frozen: Sequence[str] = ()):
        self.tasks = tuple(tasks)
        self.loss_weights = dict(loss_weights)
        self.grad_fns = {t: make_task_grad(model, t, i, accumulation, deterministic, objective, frozen)
                         for i, t in enumerate(self.tasks)}
        self.update = make_update(optimizer, total_steps)

    @functools.lru_cache(maxsize=None)
    def _weights(self, tasks: tuple[str, ...]) -> jax.Array:
        """[devices, T] loss weights, made once per task set rather than every step."""
        row = [self.loss_weights.get(t, 1.0) for t in tasks]
        return jnp.asarray([row] * jax.local_device_count(), jnp.float32)

    def __call__(self, state: TrainState, batches: Mapping[str, PyTree], step: int, key: jax.Array):
        """state replicated; batches {task: leaves [devices, rows, ...]} -> (state, metrics)."""
        tasks = [t for t in self.tasks if t in batches]  # a fixed order: PCGrad's task indices
        grads, losses = [], {}
        for task in tasks:
            grad, loss, _ = self.grad_fns[task](state.params, state.teacher, batches[task], step, key)
            grads.append(grad)
            losses[task] = loss
        state, metrics = self.update(state, tuple(grads), self._weights(tuple(tasks)))
        metrics["loss"] = losses
        return state, metrics
