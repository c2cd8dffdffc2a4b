"""Each task's loss on its head's output, per example (the objective weighs and sums them)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtbert_jax.tasks import BINARY, MULTICLASS, TASKS

Array = jax.Array


def per_example_loss(task: str, prediction: Array, labels: Array) -> Array:
    """[batch] losses: cross-entropy (sentiment), binary cross-entropy on one logit (Quora),
    squared error (STS)."""
    kind = TASKS[task].kind
    if kind == MULTICLASS:
        return optax.softmax_cross_entropy_with_integer_labels(
            prediction.astype(jnp.float32), labels.astype(jnp.int32))
    if kind == BINARY:
        return optax.sigmoid_binary_cross_entropy(prediction.astype(jnp.float32),
                                                  labels.astype(jnp.float32))
    return jnp.square(prediction.astype(jnp.float32) - labels.astype(jnp.float32))
