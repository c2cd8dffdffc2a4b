"""The data-parallel train step: per-task loss-and-gradient, then one update.

Per task, the gradient of that task's loss on its batch (split on a leading device axis) is
summed over micro-batches (gradient accumulation) and over devices (psum), and divided by the
number of real examples: exactly the gradient of the mean loss over the global batch, so 1
device and N devices, or accumulation 1 and k, take the same step. The per-task gradients of a
step are stacked on a leading task axis and handed to the optimizer ([task combiner] -> clip ->
AdamW). The per-device functions are plain module-level functions (`task_gradient`,
`apply_update`, `train_step`) that `StepRunner` binds with functools.partial and wraps in
jax.pmap; jit(shard_map) could wrap them as well.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from mtbert_jax.batch import EXAMPLE_IDS, WEIGHTS
from mtbert_jax.model.multitask import MultiTaskModel
from mtbert_jax.training import distributed
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
    average: PyTree = None  # the weight average evaluated and saved (optimizer.ema_decay > 0)

    @classmethod
    def create(cls, params: PyTree, optimizer: Optimizer, with_teacher: bool = False,
               step: int = 0) -> "TrainState":
        """Fresh optimizer state; the teacher and the average (when wanted) start as copies of
        the parameters."""
        return cls(params, optimizer.init(params), jnp.asarray(step, jnp.int32),
                   params if with_teacher else None, params if optimizer.config.ema_decay > 0 else None)

    def saved(self) -> dict:
        """What a checkpoint holds: the fields by name, without an average the run does not keep,
        so that checkpoints from before weight averaging existed restore as they are."""
        return {k: v for k, v in self._asdict().items() if not (k == "average" and v is None)}

    @classmethod
    def from_saved(cls, saved: Mapping) -> "TrainState":
        return cls(**saved)

    @property
    def evaluated(self) -> PyTree:
        """The parameters dev evaluation, the best checkpoint and predictions use: the weight
        average when there is one."""
        return self.params if self.average is None else self.average


def ema_decay(decay: float, step: jax.Array) -> jax.Array:
    """The average's decay at the step numbered `step` (the steps before it): min(decay,
    (1 + step) / (10 + step)), TensorFlow's ExponentialMovingAverage warm-up with num_updates,
    so that the starting weights fade in the first steps rather than weigh on the average all
    run."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def task_gradient(params: PyTree, teacher: PyTree, batch: Mapping[str, jax.Array], step: jax.Array,
                  key: jax.Array, *, loss_sum: Callable, task_index: int, accumulation: int = 1,
                  frozen: Sequence[str] = ()) -> tuple[PyTree, jax.Array, jax.Array]:
    """Per device: (gradient of the mean loss over the global batch, that mean loss, real rows).

    `loss_sum(params, teacher, batch, key) -> (summed loss, real rows)` is the task's objective;
    the batch's rows divide by `accumulation`. The dropout key is folded per step and task only:
    the batch's `example_ids` (each row's index in the global batch) make the masks differ per
    example, so that an example draws the same dropout on any device, in any micro-batch
    (without them, rows are numbered from this device's index). With MNRL on and more than one
    device or micro-batch, the in-batch negatives span the global batch through a gradient cache
    (`_ranking_vector_grads`; an extra forward pass of the batch). `frozen` names top-level
    parameter groups (such as "bert") that are not differentiated: their gradient is zeros
    without being computed (with heads only, the backward pass stops at the frozen encoder's
    output). Call it under pmap (or shard_map) with the axis name AXIS.
    """
    frozen = tuple(frozen)

    def loss_of_trainable(trainable, fixed, teacher, batch, key, **kwargs):
        return loss_sum({**trainable, **fixed}, teacher, batch, key, **kwargs)

    key = jax.random.fold_in(jax.random.fold_in(key, step), task_index)
    examples = batch[WEIGHTS].shape[0]  # this device's example slots (a packed batch's token rows differ)
    if EXAMPLE_IDS not in batch:
        batch = {**batch, EXAMPLE_IDS: jax.lax.axis_index(AXIS) * examples + jnp.arange(examples, dtype=jnp.int32)}
    # Packed batches have rows of tokens and example slots: each leaf splits by its own length.
    micro = jax.tree_util.tree_map(lambda x: x.reshape((accumulation, x.shape[0] // accumulation) + x.shape[1:]), batch)
    # MNRL over more than this one batch (devices or micro-batches): its gradient cache.
    global_ranking = getattr(loss_sum, "mnrl_on", False) and (accumulation > 1 or jax.lax.axis_size(AXIS) > 1)
    vector_grads = _ranking_vector_grads(loss_sum, params, batch, micro, key) if global_ranking else None

    def value_and_grad(batch, key, vector_grads):
        trainable = {k: v for k, v in params.items() if k not in frozen}
        fixed = {k: jax.lax.stop_gradient(params[k]) for k in frozen if k in params}
        objective = functools.partial(loss_of_trainable, vector_grads=vector_grads) if global_ranking \
            else loss_of_trainable
        value, grad = jax.value_and_grad(objective, has_aux=True)(trainable, fixed, teacher, batch, key)
        return value, {**grad, **jax.tree_util.tree_map(jnp.zeros_like, fixed)}

    if accumulation == 1:  # no zero-filled accumulators: a full pass over the params saved
        first = None if vector_grads is None else jax.tree_util.tree_map(lambda x: x[0], vector_grads)
        (loss, count), grad = value_and_grad(batch, key, first)
        totals = (grad, loss, count)
    else:
        def accumulate(totals, inputs):
            mb, vg = inputs
            (loss, count), grad = value_and_grad(mb, key, vg)
            total_grad, total_loss, total_count = totals
            return (jax.tree_util.tree_map(jnp.add, total_grad, grad), total_loss + loss,
                    total_count + count), None

        zeros = (jax.tree_util.tree_map(jnp.zeros_like, params), jnp.zeros(()), jnp.zeros(()))
        totals, _ = jax.lax.scan(accumulate, zeros, (micro, vector_grads))
    grad, loss, count = _sum_over_devices(totals)
    denominator = jnp.maximum(count, 1.0)
    return jax.tree_util.tree_map(lambda g: g / denominator, grad), loss / denominator, count


def _sum_over_devices(tree: PyTree) -> PyTree:
    """psum over AXIS; on one device (a static size) the tree as it is: XLA:CPU would otherwise
    copy every gradient through a one-device all-reduce (70 ms of a 2.4 s bert-base step)."""
    return tree if jax.lax.axis_size(AXIS) == 1 else jax.lax.psum(tree, AXIS)


def _ranking_vector_grads(objective, params, batch, micro, key):
    """MNRL's gradient cache: the whole global batch's sentence vectors (every device, every
    micro-batch; no gradients kept), its MNRL term, and that term's gradient with respect to
    each of this device's vectors, with each row's share of the value: [accumulation, rows, ...]."""
    accumulation, rows = micro[WEIGHTS].shape[:2]
    fixed = jax.lax.stop_gradient(params)
    u, v = jax.lax.map(lambda mb: tuple(x.astype(jnp.float32) for x in objective.pair_vectors(fixed, mb, key)),
                       micro)
    u, v = u.reshape(accumulation * rows, -1), v.reshape(accumulation * rows, -1)
    gather = functools.partial(jax.lax.all_gather, axis_name=AXIS, tiled=True)
    positive, ids_b = gather(objective.positive_rows(batch)), gather(objective.second_texts(batch))
    real_rows = jax.lax.psum(batch[WEIGHTS].sum(), AXIS)

    def ranking(u, v):
        values = objective.ranking(u, v, positive, ids_b, real_rows)
        return values.sum(), values

    (_, values), (du, dv) = jax.value_and_grad(ranking, argnums=(0, 1), has_aux=True)(gather(u), gather(v))
    mine = jax.lax.axis_index(AXIS) * accumulation * rows  # this device's rows in the gathered order
    return tuple(jax.lax.dynamic_slice_in_dim(x, mine, accumulation * rows).reshape((accumulation, rows) + x.shape[1:])
                 for x in (du, dv, values))


def apply_update(state: TrainState, grads: Sequence[PyTree], loss_weights: jax.Array, *,
                 optimizer: Optimizer, total_steps: int = 1, second: bool = False) -> tuple[TrainState, dict]:
    """Per device: the per-task gradients (already averaged over devices), weighted and stacked
    on a leading task axis, through the optimizer; SMART's teacher and the weight average
    follow the parameters.

    GSE (`optimizer.gse`) updates twice per step: first on the gradients at the step's
    parameters (second=False: the PCGrad update), then on the gradients taken afresh at the
    parameters that gave (second=True). The step counter, the teacher and the average advance
    once, after the step's last update.
    """
    stacked = jax.tree_util.tree_map(
        lambda *g: jnp.stack(g) * loss_weights.reshape((-1,) + (1,) * g[0].ndim), *grads)
    update = optimizer.second_update if second else optimizer.update
    params, opt_state, metrics = update(stacked, state.opt_state, state.params)
    if optimizer.gse and not second:
        return state._replace(params=params, opt_state=opt_state), metrics
    teacher = state.teacher
    if teacher is not None:
        teacher = update_teacher(teacher, params, state.step, total_steps)
    average = state.average
    if average is not None:
        average = optax.incremental_update(params, average, 1.0 - ema_decay(optimizer.config.ema_decay, state.step))
    return TrainState(params, opt_state, state.step + 1, teacher, average), metrics


def gse_key(key: jax.Array) -> jax.Array:
    """The dropout key of GSE's second forward and backward: fresh masks, as a second
    forward pass in PyTorch would draw."""
    return jax.random.fold_in(key, 1 << 30)


def gradients_then_update(state: TrainState, tasks: Sequence[str], gradient: Callable, update: Callable,
                          gse: bool, key: jax.Array, second_key: jax.Array) -> tuple[TrainState, dict]:
    """The order of a step, whether its parts run on one device or each under its own pmap:
    every task's gradient (`gradient(task, state, key) -> (grad, loss)`), in `tasks`' order
    (PCGrad's task indices), then the update (`update(state, grads, second) -> (state,
    metrics)`). GSE (seed 002's "gradient surgery experiment") then takes every task's gradient
    again at the updated parameters, under fresh dropout masks (`second_key`), for its second
    update."""
    def all_gradients(state, key):
        grads, losses = [], {}
        for task in tasks:
            grad, losses[task] = gradient(task, state, key)
            grads.append(grad)
        return tuple(grads), losses

    grads, losses = all_gradients(state, key)
    state, metrics = update(state, grads, False)
    metrics["loss"] = losses
    if gse:
        grads, losses = all_gradients(state, second_key)
        state, second = update(state, grads, True)
        metrics |= {**second, "gse/loss": losses}
    return state, metrics


def train_step(state: TrainState, batches: Mapping[str, Mapping[str, jax.Array]], key: jax.Array,
               loss_weights: jax.Array, *, gradients: Mapping[str, Callable], optimizer: Optimizer,
               total_steps: int = 1) -> tuple[TrainState, dict]:
    """Per device, one whole step (`gradients_then_update` in one program). `gradients[task]` is
    `task_gradient` bound to the task's objective. Metrics stay on the device: each task's loss
    and the optimizer's metrics."""
    def gradient(task, state, key):
        grad, loss, _ = gradients[task](state.params, state.teacher, batches[task], state.step, key)
        return grad, loss

    def update(state, grads, second):
        return apply_update(state, grads, loss_weights, optimizer=optimizer, total_steps=total_steps, second=second)

    return gradients_then_update(state, tuple(batches), gradient, update, optimizer.gse, key, gse_key(key))


class StepRunner:
    """Runs steps on replicated state: {task: device-split batch} -> (state, device metrics).

    A step that trains one task is one compiled program (gradient and update; one per task and
    batch shape). A step of every task (the all_tasks_* schedules) runs one gradient program per task, then
    the update: compilations then grow with the number of batch shapes per task, not with the
    number of their combinations. Nothing here waits for the device: metrics come back as device
    arrays (each task's loss, norms, learning rates) for the caller to fetch when it
    logs or saves; the state's buffers are donated to the new state.
    """

    def __init__(self, model: MultiTaskModel, optimizer: Optimizer, tasks: Sequence[str],
                 loss_weights: Mapping[str, float], accumulation: int = 1, deterministic: bool = False,
                 objective: Optional[ObjectiveConfig] = None, total_steps: int = 1,
                 frozen: Sequence[str] = ()):
        self.tasks = tuple(tasks)
        self.loss_weights = dict(loss_weights)
        objective = objective or ObjectiveConfig()
        self.gradients = {t: functools.partial(
            task_gradient, loss_sum=make_objective(model, t, objective, deterministic), task_index=i,
            accumulation=accumulation, frozen=frozen) for i, t in enumerate(self.tasks)}
        # Every argument mapped on axis 0 (the key replicated, `_device_keys`): pmap's Python
        # wrapper then takes its fast path for in_axes, about 0.1 ms less per dispatch.
        self.grad_fns = {t: jax.pmap(g, axis_name=AXIS) for t, g in self.gradients.items()}
        self.gse = optimizer.gse
        self.update = jax.pmap(functools.partial(apply_update, optimizer=optimizer, total_steps=total_steps),
                               axis_name=AXIS, donate_argnums=(0,))
        self.second_update = jax.pmap(functools.partial(apply_update, optimizer=optimizer, total_steps=total_steps,
                                                        second=True), axis_name=AXIS, donate_argnums=(0,))
        self.whole_step = jax.pmap(
            functools.partial(train_step, gradients=self.gradients, optimizer=optimizer, total_steps=total_steps),
            axis_name=AXIS, donate_argnums=(0,))
        self._key: tuple = (None, None)  # (the key last given, (it, GSE's) per device)

    @functools.lru_cache(maxsize=None)
    def _weights(self, tasks: tuple[str, ...]) -> jax.Array:
        """[devices, T] loss weights, made once per task set rather than every step."""
        row = [self.loss_weights.get(t, 1.0) for t in tasks]
        return jnp.asarray([row] * jax.local_device_count(), jnp.float32)

    def _device_keys(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The run's dropout key (the same every step) and GSE's, stacked per local device, made
        once rather than every step."""
        if self._key[0] is not key:
            self._key = (key, distributed.replicate((key, gse_key(key))))
        return self._key[1]

    def __call__(self, state: TrainState, batches: Mapping[str, PyTree], key: jax.Array):
        """state replicated; batches {task: leaves [devices, rows, ...]}; key one PRNG key (the
        same every step: the step number is folded in on the device) -> (state, metrics)."""
        tasks = tuple(t for t in self.tasks if t in batches)  # a fixed order: PCGrad's task indices
        weights = self._weights(tasks)
        key, second_key = self._device_keys(key)
        if len(tasks) == 1:
            return self.whole_step(state, {tasks[0]: batches[tasks[0]]}, key, weights)

        def gradient(task, state, key):
            grad, loss, _ = self.grad_fns[task](state.params, state.teacher, batches[task], state.step, key)
            return grad, loss

        def update(state, grads, second):
            return (self.second_update if second else self.update)(state, grads, weights)

        return gradients_then_update(state, tasks, gradient, update, self.gse, key, second_key)
