"""Gradient transformations that combine per-task gradients: sum, mean and PCGrad.

Input contract for all of them: every leaf of `updates` has a leading task axis
([num_tasks, *param.shape]); the output has the parameters' shapes. They must come first in
an optax chain (like optax.contrib's differentially private transforms, which take a leading
per-example axis).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from mtbert_jax.errors import ConfigError

Array = jax.Array
PyTree = Any


class TaskAxisError(ConfigError):
    """Updates handed to a task combiner lack the leading task axis, or have too few tasks."""


def _check_task_axis(updates: PyTree, params: Optional[PyTree], name: str) -> int:
    leaves = jax.tree_util.tree_leaves(updates)
    if not leaves or any(jnp.ndim(x) == 0 for x in leaves):
        raise TaskAxisError(f"{name}: every update leaf needs a leading task axis "
                            "[num_tasks, *param.shape]; it must come first in the chain")
    sizes = {x.shape[0] for x in leaves}
    if len(sizes) != 1:
        raise TaskAxisError(f"{name}: leaves disagree on the task axis size: {sorted(sizes)}")
    if params is not None:
        for u, p in zip(leaves, jax.tree_util.tree_leaves(params)):
            if u.shape[1:] != jnp.shape(p):
                raise TaskAxisError(f"{name}: an update of shape {u.shape} does not match its "
                                    f"parameter {jnp.shape(p)} behind a leading task axis")
    return sizes.pop()


def _reduce_tasks(reduce: Callable[[Array], Array], name: str) -> optax.GradientTransformation:
    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        _check_task_axis(updates, params, name)
        return jax.tree_util.tree_map(reduce, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def sum_tasks() -> optax.GradientTransformation:
    """Sums per-task gradients: the plain multi-task gradient (input has a leading task axis)."""
    return _reduce_tasks(lambda g: g.sum(0), "sum_tasks")


def mean_tasks() -> optax.GradientTransformation:
    """Averages per-task gradients (input has a leading task axis)."""
    return _reduce_tasks(lambda g: g.mean(0), "mean_tasks")


class PCGradState(NamedTuple):
    key: Array  # PRNG key for the per-task random orders
    num_conflicts: Array  # int32: task pairs whose shared gradients had a negative dot product
    cosines: Array  # [num_tasks, num_tasks] float32: pairwise cosines of the shared gradients


def pcgrad(key: Array, num_tasks: int, shared: Union[PyTree, Callable[[PyTree], PyTree]],
           reduction: str = "sum") -> optax.GradientTransformation:
    """Projecting Conflicting Gradients (Yu et al. 2020), over the shared parameters only.

    For each task i, in a fresh random order of the other tasks j: if g_i' . g_j < 0 then
    g_i' -= (g_i' . g_j) / ||g_j||^2 g_j, always against the ORIGINAL g_j. The update is the sum
    (or mean) of the projected gradients. Parameters that are not shared (a task's head or
    adapters) keep their task's plain gradient, with either reduction (as in the PyTorch port). Every projection is a linear combination of the
    original gradients, so the work is one Gram matrix of dot products plus one weighted sum.

    Args:
      key: PRNG key; split every step for the random orders (kept in the state).
      num_tasks: the size of the leading task axis.
      shared: a pytree of bools like the parameters (True: shared by two or more tasks, to be
        projected), or a function params -> such a tree.
      reduction: "sum" (the paper) or "mean" (the popular PyTorch port) of the shared parts.

    Returns:
      A GradientTransformation whose input has a leading task axis, [num_tasks, *param.shape],
      on every leaf; it must come first in the chain. Its state reports the number of
      conflicting pairs and the pairwise cosines of the step.

    Example:
      tx = optax.chain(pcgrad(jax.random.PRNGKey(0), 3, shared_mask), optax.adamw(1e-5))
    """
    if reduction not in ("sum", "mean"):
        raise ConfigError(f"optimizer.pcgrad_reduction={reduction!r}: expected 'sum' or 'mean'")
    if num_tasks < 2:
        raise TaskAxisError(
            f"pcgrad needs the gradients of two or more tasks in every step, got num_tasks={num_tasks}; "
            "use a schedule with all tasks per step (all_tasks_scaled_batches, all_tasks_until_largest or "
            "all_tasks_until_smallest)")

    def init_fn(params):
        del params
        return PCGradState(key=key, num_conflicts=jnp.zeros((), jnp.int32),
                           cosines=jnp.eye(num_tasks, dtype=jnp.float32))

    def update_fn(updates, state, params=None):
        tasks = _check_task_axis(updates, params, "pcgrad")
        if tasks != num_tasks:
            raise TaskAxisError(f"pcgrad was built for {num_tasks} tasks, the updates have {tasks}")
        mask = shared(params if params is not None else updates) if callable(shared) else shared
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        mask_leaves = treedef.flatten_up_to(mask)
        # Gram matrix of the shared parts: gram[i, j] = g_i . g_j.
        gram = sum((jnp.einsum("t...,s...->ts", g.astype(jnp.float32), g.astype(jnp.float32))
                    for g, m in zip(leaves, mask_leaves) if m),
                   jnp.zeros((tasks, tasks), jnp.float32))
        key, order_key = jax.random.split(state.key)
        coefficients = _projection_coefficients(gram, jax.random.split(order_key, tasks))
        # update = sum_i g_i' = sum_k (sum_i C[i, k]) g_k  (shared parameters)
        weights = coefficients.sum(0)
        scale = 1.0 / tasks if reduction == "mean" else 1.0

        def combine(g, is_shared):
            if not is_shared:  # one task's own parameter: that task's gradient, never averaged
                return g.sum(0)
            return (jnp.tensordot(weights, g.astype(jnp.float32), axes=1) * scale).astype(g.dtype)

        combined = treedef.unflatten([combine(g, m) for g, m in zip(leaves, mask_leaves)])
        norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
        cosines = gram / jnp.maximum(norms[:, None] * norms[None, :], 1e-30)
        conflicts = jnp.sum(jnp.triu(gram < 0, k=1)).astype(jnp.int32)
        return combined, PCGradState(key, conflicts, cosines)

    return optax.GradientTransformation(init_fn, update_fn)


def _projection_coefficients(gram: Array, keys: Array) -> Array:
    """C with g_i' = sum_k C[i, k] g_k after PCGrad's projections (T is small and static)."""
    tasks = gram.shape[0]
    squared_norms = jnp.diag(gram)
    rows = []
    for i in range(tasks):
        others = jnp.array([j for j in range(tasks) if j != i], jnp.int32)
        order = jax.random.permutation(keys[i], others)
        c = jnp.zeros(tasks, jnp.float32).at[i].set(1.0)
        for position in range(tasks - 1):
            j = order[position]
            dot = c @ gram[:, j]  # g_i' . g_j
            safe = squared_norms[j] > 0  # guard ||g_j|| = 0
            step = jnp.where((dot < 0) & safe, dot / jnp.where(safe, squared_norms[j], 1.0), 0.0)
            c = c.at[j].add(-step)
        rows.append(c)
    return jnp.stack(rows)
