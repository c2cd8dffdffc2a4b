"""Each task's training objective: its loss, plus optionally MNRL, SMART and uncertainty weighting.

An objective returns (sum of per-example losses over the real rows, number of real rows), so
micro-batches and devices add up to the exact mean (see train_step.py).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from mtbert_jax.heads import COSINE_SCALE, cosine
from mtbert_jax.losses import per_example_loss
from mtbert_jax.multitask_model import MultiTaskModel
from mtbert_jax.smart import SmartConfig, perturbation, symmetric_divergence
from mtbert_jax.task_files import TASKS

Array = jax.Array
STS_LOSSES = ("mse", "cosine_embedding")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    smart: SmartConfig = SmartConfig()
    # Multiple negatives ranking loss (pair tasks with a bi-encoder head), on positive pairs:
    # Quora duplicates, STS pairs with similarity >= mnrl_sts_threshold.
    mnrl_tasks: Sequence[str] = ()
    mnrl_weight: float = 1.0  # added to the task's own loss with this weight ...
    mnrl_only: bool = False  # ... or instead of it
    mnrl_sts_threshold: float = 4.0
    sts_loss: str = "mse"  # or "cosine_embedding" (label thresholded at 2.5; bi-encoder)
    uncertainty_weighting: bool = False  # Kendall et al. 2018: exp(-s_t) L_t + s_t, s_t learned

    def __post_init__(self):
        if self.sts_loss not in STS_LOSSES:
            raise ValueError(f"sts_loss={self.sts_loss!r}: expected one of {STS_LOSSES}")


def uncertainty_name(task: str) -> str:
    return f"uncertainty_{task}"


def positives(task: str, labels: Array, threshold: float) -> Array:
    """[batch] 1.0 where a pair is positive: a duplicate (Quora), similar enough (STS)."""
    if task == "sts":
        return (labels >= threshold).astype(jnp.float32)
    return (labels > 0).astype(jnp.float32)


def mnrl(u: Array, v: Array, rows: Array, input_ids_b: Array, scale: float = COSINE_SCALE) -> Array:
    """[batch] multiple negatives ranking loss of each row (0 where rows == 0).

    S_ij = scale cos(u_i, v_j) over the rows taking part; row i's target is column i. A column
    whose second text equals row i's own (same token ids) is not used as a negative for it.
    """
    un = u / jnp.maximum(jnp.linalg.norm(u, axis=-1, keepdims=True), 1e-8)
    vn = v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-8)
    scores = scale * (un.astype(jnp.float32) @ vn.astype(jnp.float32).T)
    same_text = jnp.all(input_ids_b[:, None, :] == input_ids_b[None, :, :], -1)
    usable = (rows[None, :] > 0) & (~same_text | jnp.eye(len(rows), dtype=bool))
    scores = jnp.where(usable, scores, -1e9)
    losses = optax.softmax_cross_entropy_with_integer_labels(scores, jnp.arange(len(rows)))
    return losses * rows


def cosine_embedding_loss(u: Array, v: Array, labels: Array) -> Array:
    """[batch] torch's CosineEmbeddingLoss (margin 0) with y = +1 when similarity > 2.5."""
    c = cosine(u, v)
    return jnp.where(labels > 2.5, 1.0 - c, jnp.maximum(c, 0.0))


def make_objective(model: MultiTaskModel, task: str, config: ObjectiveConfig,
                   deterministic: bool = False) -> Callable:
    """(params, teacher, batch, key) -> (loss summed over real rows, number of real rows)."""
    smart_on = task in config.smart.tasks
    mnrl_on = task in config.mnrl_tasks
    bi_encoder = model.config.pair_encoding(task) == "bi"
    if (mnrl_on or (task == "sts" and config.sts_loss == "cosine_embedding")) and not bi_encoder:
        raise ValueError(f"{task}: MNRL and the cosine embedding loss need a bi-encoder pair head, "
                         f"not {model.config.pair_head(task)!r}")

    def forward(params, batch, key, deltas=None):
        return model.apply({"params": params}, task, batch, deterministic=deterministic,
                           perturbations=deltas, rngs={"dropout": key})

    def objective(params, teacher, batch, key):
        weights = batch["weights"]
        count = weights.sum()
        out = forward(params, batch, key)
        if task == "sts" and config.sts_loss == "cosine_embedding":
            per_example = cosine_embedding_loss(*out.embeddings, batch["labels"])
        else:
            per_example = per_example_loss(task, out.prediction, batch["labels"])
        total = (per_example * weights).sum()
        if mnrl_on:
            rows = positives(task, batch["labels"], config.mnrl_sts_threshold) * weights
            ranking = mnrl(*out.embeddings, rows, batch["input_ids_b"]).sum()
            if config.mnrl_only:
                total, count = ranking, rows.sum()
            else:
                total = total + config.mnrl_weight * ranking
        if smart_on:
            cfg = config.smart
            frozen = jax.lax.stop_gradient(params)  # the ascent step does not train the weights
            shapes = [batch["input_ids" + s].shape + (model.bert_config.hidden_size,)
                      for s in ("", "_b") if "input_ids" + s in batch]
            deltas = perturbation(task, lambda d: forward(frozen, batch, key, d).prediction,
                                  out.prediction, shapes, weights, jax.random.fold_in(key, 1), cfg)
            adversarial = symmetric_divergence(task, forward(params, batch, key, deltas).prediction,
                                               out.prediction)
            total = total + cfg.lambda_s * (adversarial * weights).sum()
            if cfg.mu > 0 and teacher is not None:
                taught = jax.lax.stop_gradient(forward(teacher, batch, key).prediction)
                total = total + cfg.mu * (symmetric_divergence(task, out.prediction, taught) * weights).sum()
        if config.uncertainty_weighting:
            s = params[uncertainty_name(task)]
            total = jnp.exp(-s) * total + s * count
        return total, count

    return objective
