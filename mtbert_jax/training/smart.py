"""SMART (Jiang et al. 2020): smoothness-inducing adversarial regularisation and the Bregman
proximal point term with a moving-average teacher, as the paper states them.

With x the embedding-layer output (after word + position + type embeddings and their LayerNorm):
  x~ = x + nu, nu ~ N(0, sigma^2); one ascent step on l_s(f(x~), stop_grad(f(x))) w.r.t. x~,
  x~ <- x~ + eta g / ||g||_inf, then ||x~ - x||_inf <= eps;
  loss = task loss + lambda_s l_s(f(x~), f(x)) + mu l_s(f(x; theta), f(x; theta_teacher)),
  l_s: symmetric KL for classification (two-class for a binary logit), squared error for scores.
The teacher is an exponential moving average of the weights: beta 0.99 for the first 10% of
updates, then 0.999.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from mtbert_jax.model.dropout import POSITION_STRIDE, TokenIds
from mtbert_jax.tasks import TASKS

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SmartConfig:
    """SMART (Jiang et al. 2020). These defaults are the run's (configs/default.py's
    objective.smart)."""

    # The tasks SMART is on for, e.g. ("sst", "sts").
    tasks: Sequence[str] = ()
    # Weight of the adversarial smoothness term (the paper tries 1, 3, 5).
    lambda_s: float = 1.0
    # Weight of the Bregman proximal term against the moving-average teacher (0: no teacher).
    mu: float = 1.0
    # Standard deviation of the initial perturbation of the embedding outputs.
    sigma: float = 1e-5
    # Step size of the one ascent step.
    eta: float = 1e-3
    # Infinity-norm radius the perturbation is projected to.
    eps: float = 1e-5

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))


def perturbation(task: str, forward: Callable[[Sequence[Array]], Array], clean: Array,
                 shapes: Sequence[tuple], weights: Array, key: Array, config: SmartConfig,
                 noise_ids: Optional[Sequence[TokenIds]] = None,
                 slots: Optional[Sequence[Optional[Array]]] = None) -> list[Array]:
    """The adversarial perturbation of each embedding output (one ascent step, projected).

    forward(deltas) -> head output with the deltas added to the embedding outputs. With
    `noise_ids` (each side's TokenIds) a token's initial noise depends on its example and
    position only. The ascent step is normalised per example: over its rows' tokens (padded
    batch), or, for a packed side (its `slots`: each token's example slot), over its tokens.
    """
    keys = jax.random.split(key, len(shapes))
    noise = []
    for i, (k, s) in enumerate(zip(keys, shapes)):
        if noise_ids is None:
            noise.append(config.sigma * jax.random.normal(k, s))
            continue
        ids = noise_ids[i]
        token = (ids.example.astype(jnp.uint32) * jnp.uint32(POSITION_STRIDE) + ids.position.astype(jnp.uint32))
        draw = jax.vmap(lambda j, k=k, s=s: jax.random.normal(jax.random.fold_in(k, j), s[-1:]))
        noise.append(config.sigma * draw(token.reshape(-1)).reshape(s))
    target = jax.lax.stop_gradient(clean)

    def divergence(deltas):
        return (TASKS[task].kind.divergence(forward(deltas), target) * weights).sum()

    grads = jax.grad(divergence)(noise)
    deltas = []
    for i, (delta, g) in enumerate(zip(noise, grads)):
        slot = None if slots is None else slots[i]
        if slot is None:
            g_inf = jnp.max(jnp.abs(g), axis=(1, 2), keepdims=True)  # per example (row)
        else:  # per example of a packed side: the max over its own tokens
            token_max = jnp.max(jnp.abs(g), axis=-1).reshape(-1)
            num_slots = weights.shape[0]
            per_example = jax.ops.segment_max(token_max, slot.reshape(-1), num_slots)
            g_inf = per_example[jnp.maximum(slot, 0)][..., None]
        delta = delta + config.eta * g / jnp.maximum(g_inf, 1e-12)
        deltas.append(jax.lax.stop_gradient(jnp.clip(delta, -config.eps, config.eps)))
    return deltas


def teacher_beta(step: Array, total_steps: int) -> Array:
    return jnp.where(step < 0.1 * total_steps, 0.99, 0.999)


def update_teacher(teacher, params, step: Array, total_steps: int):
    return optax.incremental_update(params, teacher, 1.0 - teacher_beta(step, total_steps))
