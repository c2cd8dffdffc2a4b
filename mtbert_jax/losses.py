"""Each task's loss on its head's output, averaged over the batch's real rows (weight 1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtbert_jax.task_files import TASKS

Array = jax.Array


def per_example_loss(task: str, prediction: Array, labels: Array) -> Array:
    """[batch] losses: cross-entropy (sentiment), binary cross-entropy on one logit (Quora),
    squared error (STS)."""
    spec = TASKS[task]
    if spec.num_classes is not None and not spec.is_pair:
        return optax.softmax_cross_entropy_with_integer_labels(
            prediction.astype(jnp.float32), labels.astype(jnp.int32))
    if spec.num_classes is not None:
        return optax.sigmoid_binary_cross_entropy(prediction.astype(jnp.float32),
                                                  labels.astype(jnp.float32))
    return jnp.square(prediction.astype(jnp.float32) - labels.astype(jnp.float32))


def task_loss(task: str, prediction: Array, labels: Array, weights: Array) -> Array:
    """Weighted mean over the batch; filler rows (weight 0) do not count."""
    losses = per_example_loss(task, prediction, labels)
    return (losses * weights).sum() / jnp.maximum(weights.sum(), 1.0)
