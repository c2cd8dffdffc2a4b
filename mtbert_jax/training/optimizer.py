"""The optimizer: [task combiner] -> clip by global norm -> AdamW per parameter group.

Groups by parameter name (see param_groups.py): the encoder (`bert/...`) and the task parts
(heads, adapters) each have their own learning rate with linear warm-up and linear decay, and
task-specific top layers (whole transformer layers) may have a third; frozen groups get zero
updates and no optimizer state. No weight decay on LayerNorm and biases. Layer-wise learning-rate
decay (Howard & Ruder 2018; Clark et al. 2020, ELECTRA) scales the encoder's rate by
decay^(layers above): the top layer and the pooler 1, the embeddings decay^num_layers.

Task combiners: sum, mean, pcgrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning")
and gse, seed 002's "gradient surgery experiment": a PCGrad update with the mean of the
projected gradients, then a second update with the summed loss's gradient taken afresh at the
updated parameters.

`Optimizer.update` is the whole update of a step, GSE's second update included, and reports
what it did (per-task gradient norms, each group's learning rate, parameter and update norms,
PCGrad's conflicts), so the train step never looks inside the optimizer's state.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from mtbert_jax.errors import ConfigError
from mtbert_jax.training.param_groups import ENCODER, TOP_LAYERS, label_tree, path_tree
from mtbert_jax.training.pcgrad import PCGradState, mean_tasks, pcgrad, sum_tasks

COMBINERS = ("sum", "mean", "pcgrad", "gse")
_ENCODER_LAYER = r"^bert/encoder/layer_(\d+)/"
PyTree = Any


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warm-up and decay, per parameter group. These defaults are the run's
    (configs/default.py builds its `optimizer` section from them)."""

    # Peak learning rate of the encoder (bert/...).
    encoder_lr: float = 5e-5
    # Peak learning rate of the heads and adapters.
    task_lr: float = 5e-4
    # Task-specific top transformer layers (adapters top_layer, low_rank_top_layer); unset:
    # task_lr. At task_lr seed 004's STS head collapsed; 5e-5 fixed it (docs/results.md).
    top_layer_lr: Optional[float] = None
    # Layer-wise learning-rate decay: the encoder's rate times this per layer down from the top
    # (the embeddings get decay^num_layers; 1: one rate for the whole encoder).
    layer_lr_decay: float = 1.0
    # Fraction of the steps spent warming up from 0 to the peak rates.
    warmup_fraction: float = 0.1
    # AdamW's decoupled weight decay (not on LayerNorm and biases).
    weight_decay: float = 0.01
    # Clip the combined gradient to this global norm (0: no clipping).
    max_grad_norm: float = 1.0
    # Train only the task parts (heads, adapters) for the whole run.
    freeze_encoder: bool = False
    # How per-task gradients combine: sum | mean | pcgrad (project conflicts first) | gse (seed
    # 002's "gradient surgery experiment": a PCGrad update, then in the same step an update with
    # the summed loss's gradient taken afresh at the parameters the first gave; `second_update`).
    combiner: str = "sum"
    # PCGrad's reduction of the projected shared gradients: sum | mean (task-specific parameters
    # keep their task's gradient either way). Unset: sum (the paper) for pcgrad, mean for gse.
    pcgrad_reduction: Optional[str] = None
    # Weight averaging: dev evaluation, the best checkpoint and predictions use an exponential
    # moving average of the parameters with this decay per step (0: the parameters themselves;
    # step.TrainState.average).
    ema_decay: float = 0.0

    def __post_init__(self):
        if self.combiner not in COMBINERS:
            raise ConfigError(f"optimizer.combiner={self.combiner!r}: expected one of {COMBINERS}")
        for name in ("encoder_lr", "task_lr", "top_layer_lr", "weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not value >= 0:  # also refuses NaN
                raise ConfigError(f"optimizer.{name}={value}: expected a number >= 0")
        if not 0 < self.layer_lr_decay <= 1:
            raise ConfigError(f"optimizer.layer_lr_decay={self.layer_lr_decay}: expected a number in (0, 1]")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"optimizer.ema_decay={self.ema_decay}: expected a number in [0, 1) (0: no average)")
        if not 0 <= self.warmup_fraction <= 1:
            raise ConfigError(f"optimizer.warmup_fraction={self.warmup_fraction}: expected a number in [0, 1]")

    @property
    def reduction(self) -> str:
        """PCGrad's reduction: GSE's first update uses "the mean of the adjusted gradients"."""
        if self.pcgrad_reduction is not None:
            return self.pcgrad_reduction
        return "mean" if self.combiner == "gse" else "sum"


def learning_rate_schedule(peak: float, total_steps: int, warmup_fraction: float) -> optax.Schedule:
    """Linear warm-up from 0 to `peak` over the first fraction of steps, then linear decay to 0."""
    warmup = max(1, int(round(total_steps * warmup_fraction)))
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup),
         optax.linear_schedule(peak, 0.0, max(1, total_steps - warmup))], [warmup])


def _decay_mask(params):
    """Weight decay on matrices and embeddings only: not LayerNorm, not biases."""
    return jax.tree_util.tree_map(
        lambda path: not (path.endswith("/bias") or "/LayerNorm/" in path or path.endswith("/scale")),
        path_tree(params))


def layer_scales(params: Mapping, decay: float) -> dict:
    """Each parameter's learning-rate factor: decay^(encoder layers above it); 1 outside the
    encoder and for its pooler, decay^num_layers for the embeddings."""
    paths = jax.tree_util.tree_leaves(path_tree(params))
    layers = 1 + max([int(m.group(1)) for p in paths if (m := re.match(_ENCODER_LAYER, p))], default=-1)

    def scale(path):
        if (m := re.match(_ENCODER_LAYER, path)):
            return decay ** (layers - 1 - int(m.group(1)))
        return decay ** layers if path.startswith("bert/embeddings/") else 1.0
    return jax.tree_util.tree_map(scale, path_tree(params))


def scale_by_tree(scales: PyTree) -> optax.GradientTransformation:
    """Multiplies each update by its own constant factor (no state). Inside multi_transform the
    other groups' leaves are MaskedNodes: they pass through."""
    def scaled(s, u):
        return u if s == 1.0 or isinstance(u, optax.MaskedNode) else u * s

    def update(updates, state, params=None):
        return jax.tree_util.tree_map(scaled, scales, updates), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def shared_parameters(params: Mapping, tasks: Sequence[str]) -> dict:
    """True for parameters that two or more tasks use (what PCGrad projects): everything but
    a single task's heads, adapters and uncertainty weight."""
    own = [rf"^(heads|adapters|uncertainty)_{t}(/|$)" for t in tasks]
    return jax.tree_util.tree_map(lambda label: label == "shared",
                                  label_tree(params, [(p, "own") for p in own], "shared"))


def _norm(tree: PyTree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree_util.tree_leaves(tree)))


def _task_norms(stacked: PyTree) -> jax.Array:
    """[T] gradient norm of each task."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1)
                        for g in jax.tree_util.tree_leaves(stacked)))


class Optimizer:
    """The task combiner chained before clipping, AdamW per group and freezing.

    Args:
      config: learning rates, clipping, weight decay, combiner.
      params: the parameters (their names decide the groups).
      tasks: the trained tasks (PCGrad's shared/own split).
      total_steps: steps of this training stage (the learning-rate schedule spans them).
      num_tasks_per_step: the size of the gradients' leading task axis (PCGrad).
      key: PCGrad's PRNG key.
    """

    def __init__(self, config: OptimizerConfig, params: Mapping, tasks: Sequence[str],
                 total_steps: int, num_tasks_per_step: int, key: Optional[jax.Array] = None):
        self.config = config
        self.gse = config.combiner == "gse"
        if config.combiner in ("pcgrad", "gse"):
            combiner = pcgrad(key if key is not None else jax.random.PRNGKey(0), num_tasks_per_step,
                              shared_parameters(params, tasks), config.reduction)
        elif config.combiner == "mean":
            combiner = mean_tasks()
        else:
            combiner = sum_tasks()
        # GSE makes two AdamW updates per step, and each advances the schedule: fit it to 2x the
        # steps, or the learning rate would reach zero halfway through the run.
        self.updates_per_step = 2 if self.gse else 1
        top_lr = config.task_lr if config.top_layer_lr is None else config.top_layer_lr
        peaks = {"encoder": config.encoder_lr, "task": config.task_lr, "top_layer": top_lr}
        self.schedules = {group: learning_rate_schedule(peak, total_steps * self.updates_per_step,
                                                        config.warmup_fraction)
                          for group, peak in peaks.items()}
        self.layer_scales = layer_scales(params, config.layer_lr_decay) if config.layer_lr_decay != 1.0 else None
        self.groups = label_tree(params, [(ENCODER, "frozen" if config.freeze_encoder else "encoder"),
                                          (TOP_LAYERS, "top_layer")], "task")
        self.base = self._base()
        self.tx = optax.chain(combiner, self.base)  # its state is (combiner's, base's)

    def _base(self) -> optax.GradientTransformation:
        """Everything after the task combiner: clipping, AdamW per group, freezing."""
        frozen = jax.tree_util.tree_map(lambda g: g == "frozen", self.groups)

        def adamw(group):
            return optax.adamw(self.schedules[group], weight_decay=self.config.weight_decay, mask=_decay_mask)

        encoder = adamw("encoder")
        if self.layer_scales is not None:  # AdamW's update is the rate times a direction: scale it
            encoder = optax.chain(encoder, scale_by_tree(self.layer_scales))

        parts = [optax.masked(optax.set_to_zero(), frozen)]  # frozen gradients do not count in the norm
        if self.config.max_grad_norm > 0:
            parts.append(optax.clip_by_global_norm(self.config.max_grad_norm))
        parts.append(optax.multi_transform(
            {"encoder": encoder, "task": adamw("task"), "top_layer": adamw("top_layer"),
             "frozen": optax.set_to_zero()}, self.groups))
        return optax.chain(*parts)

    def init(self, params: PyTree) -> PyTree:
        return self.tx.init(params)

    def learning_rates(self, opt_state: PyTree) -> dict[str, jax.Array]:
        """The learning rate each trained group gets in the next update."""
        counts = [count for path, count in optax.tree_utils.tree_get_all_with_path(opt_state, "count")
                  if getattr(path[-1], "tuple_name", "") == "ScaleByScheduleState"]
        count = counts[0] if counts else jnp.zeros((), jnp.int32)  # every group counts the same updates
        trained = set(jax.tree_util.tree_leaves(self.groups)) - {"frozen"}
        return {group: self.schedules[group](count) for group in sorted(trained)}

    def update(self, stacked_grads: PyTree, opt_state: PyTree, params: PyTree
               ) -> tuple[PyTree, PyTree, dict[str, jax.Array]]:
        """Per-task gradients (a leading task axis on every leaf) -> (new params, state, metrics).

        With GSE this is the step's first update (PCGrad); the caller then takes the per-task
        gradients afresh at the new parameters, on the same batches, for `second_update`."""
        metrics = {"grad_norm": _task_norms(stacked_grads),
                   **{f"lr/{group}": lr for group, lr in self.learning_rates(opt_state).items()}}
        updates, opt_state = self.tx.update(stacked_grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        if isinstance(opt_state[0], PCGradState):
            metrics |= {"pcgrad_conflicts": opt_state[0].num_conflicts, "pcgrad_cosines": opt_state[0].cosines}
        metrics["param_norm"] = _norm(new_params)
        metrics["update_norm"] = _norm(jax.tree_util.tree_map(jnp.subtract, new_params, params))
        return new_params, opt_state, metrics

    def second_update(self, stacked_grads: PyTree, opt_state: PyTree, params: PyTree
                      ) -> tuple[PyTree, PyTree, dict[str, jax.Array]]:
        """GSE's second update (seed 002: "re-update them using the combined loss"): the summed
        loss's gradient, taken at the parameters after `update`, through the same clipping
        and AdamW (whose moments and schedule it advances)."""
        summed = jax.tree_util.tree_map(lambda g: g.sum(0), stacked_grads)
        combiner_state, base_state = opt_state
        updates, base_state = self.base.update(summed, base_state, params)
        new_params = optax.apply_updates(params, updates)
        return new_params, (combiner_state, base_state), {
            "gse/grad_norm": _task_norms(stacked_grads), "gse/update_norm": _norm(updates)}
