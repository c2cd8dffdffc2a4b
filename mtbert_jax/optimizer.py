"""The optimizer chain: [task combiner] -> clip by global norm -> AdamW per parameter group.

Groups by parameter name (see param_groups.py): the encoder (`bert/...`) and the task parts
(heads, adapters) each have their own learning rate with linear warm-up and linear decay, and
task-specific top layers (whole transformer layers) may have a third; frozen groups get zero
updates and no optimizer state. No weight decay on LayerNorm and biases.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, NamedTuple, Optional, Sequence

import jax
import optax

from mtbert_jax.param_groups import ENCODER, TOP_LAYERS, label_tree, path_tree
from mtbert_jax.task_combiners import mean_tasks, pcgrad, sum_tasks

COMBINERS = ("sum", "mean", "pcgrad", "gse")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    encoder_lr: float = 1e-5
    task_lr: float = 1e-3  # heads and adapters
    # Task-specific top transformer layers (adapter "top_layer", "low_rank_top_layer"); None: task_lr.
    top_layer_lr: Optional[float] = None
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0  # 0 turns clipping off
    freeze_encoder: bool = False
    # sum / mean: add or average per-task gradients; pcgrad: project conflicts first (sum of
    # projected gradients, or their mean with pcgrad_reduction="mean"); gse: seed 002's PCGrad
    # update followed in the same step by a plain summed-gradient update.
    combiner: str = "sum"
    pcgrad_reduction: str = "sum"

    def __post_init__(self):
        if self.combiner not in COMBINERS:
            raise ValueError(f"combiner={self.combiner!r}: expected one of {COMBINERS}")


def learning_rate(peak: float, total_steps: int, warmup_fraction: float) -> optax.Schedule:
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


def shared_parameters(params: Mapping, tasks: Sequence[str]) -> dict:
    """True for parameters that two or more tasks use (what PCGrad projects): everything but
    a single task's heads, adapters and uncertainty weight."""
    own = [rf"^(heads|adapters|uncertainty)_{t}(/|$)" for t in tasks]
    return jax.tree_util.tree_map(lambda label: label == "shared",
                                  label_tree(params, [(p, "own") for p in own], "shared"))


def make_base(config: OptimizerConfig, params: Mapping, total_steps: int) -> optax.GradientTransformation:
    """Everything after the task combiner: clipping, AdamW per group, freezing."""
    groups = label_tree(params, [(ENCODER, "frozen" if config.freeze_encoder else "encoder"),
                                 (TOP_LAYERS, "top_layer")], "task")
    frozen = jax.tree_util.tree_map(lambda g: g == "frozen", groups)

    def adamw(peak):
        return optax.adamw(learning_rate(peak, total_steps, config.warmup_fraction),
                           weight_decay=config.weight_decay, mask=_decay_mask)

    parts = [optax.masked(optax.set_to_zero(), frozen)]  # frozen gradients do not count in the norm
    if config.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(config.max_grad_norm))
    parts.append(optax.multi_transform(
        {"encoder": adamw(config.encoder_lr), "task": adamw(config.task_lr),
         "top_layer": adamw(config.task_lr if config.top_layer_lr is None else config.top_layer_lr),
         "frozen": optax.set_to_zero()}, groups))
    return optax.chain(*parts)


class Optimizer(NamedTuple):
    tx: optax.GradientTransformation  # chain(combiner, base); its state is (combiner's, base's)
    base: optax.GradientTransformation  # what GSE's second, plain summed update goes through
    gse: bool


def make_optimizer(config: OptimizerConfig, params: Mapping, tasks: Sequence[str],
                   total_steps: int, num_tasks_per_step: int, key: Optional[jax.Array] = None,
                   ) -> Optimizer:
    """The task combiner chained before the base (clipping, AdamW, freezing)."""
    if config.combiner in ("pcgrad", "gse"):
        combiner = pcgrad(key if key is not None else jax.random.PRNGKey(0), num_tasks_per_step,
                          shared_parameters(params, tasks), config.pcgrad_reduction)
    elif config.combiner == "mean":
        combiner = mean_tasks()
    else:
        combiner = sum_tasks()
    gse = config.combiner == "gse"
    # GSE makes two AdamW updates per step, and each advances the schedule: fit it to 2x the
    # steps, or the learning rate would reach zero halfway through the run.
    base = make_base(config, params, total_steps * (2 if gse else 1))
    return Optimizer(optax.chain(combiner, base), base, gse)
