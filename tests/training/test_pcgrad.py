"""PCGrad and the other task combiners against hand-computed projections."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtbert_jax.training.pcgrad import TaskAxisError, mean_tasks, pcgrad, sum_tasks


def _run(tx, updates, steps=1):
    state = tx.init(None)
    update = jax.jit(tx.update)
    for _ in range(steps):
        out, state = update(updates, state)
    return out, state


def test_two_tasks_by_hand():
    # g1 = (1, 0), g2 = (-1, 1): g1.g2 = -1 < 0.
    # g1' = g1 - (-1 / 2) g2 = (0.5, 0.5);  g2' = g2 - (-1 / 1) g1 = (0, 1);  sum = (0.5, 1.5)
    g = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}
    out, state = _run(pcgrad(jax.random.PRNGKey(0), 2, {"w": True}), g)
    np.testing.assert_allclose(out["w"], [0.5, 1.5], atol=1e-6)
    assert int(state.num_conflicts) == 1
    np.testing.assert_allclose(state.cosines[0, 1], -1 / np.sqrt(2), atol=1e-6)
    mean, _ = _run(pcgrad(jax.random.PRNGKey(0), 2, {"w": True}, reduction="mean"), g)
    np.testing.assert_allclose(mean["w"], [0.25, 0.75], atol=1e-6)


# g1 = (1, 0), g2 = (-1, 1), g3 = (0, -1): the result depends on each task's random order.
THREE = np.array([[1.0, 0.0], [-1.0, 1.0], [0.0, -1.0]])


def _reference(grads, orders):
    """PCGrad as the paper writes it, with the given order of the other tasks for each task."""
    projected = []
    for i, order in enumerate(orders):
        g = grads[i].copy()
        for j in order:
            dot = g @ grads[j]  # against the ORIGINAL g_j
            if dot < 0 and grads[j] @ grads[j] > 0:
                g = g - dot / (grads[j] @ grads[j]) * grads[j]
        projected.append(g)
    return np.sum(projected, axis=0)


def test_three_tasks_against_the_reference_with_the_same_orders():
    key = jax.random.PRNGKey(3)
    tx = pcgrad(key, 3, {"w": True})
    state = tx.init(None)
    seen = set()
    for _ in range(12):
        _, order_key = jax.random.split(state.key)
        keys = jax.random.split(order_key, 3)
        orders = [np.asarray(jax.random.permutation(keys[i], jnp.array([j for j in range(3) if j != i])))
                  for i in range(3)]
        out, state = jax.jit(tx.update)({"w": jnp.asarray(THREE)}, state)
        np.testing.assert_allclose(out["w"], _reference(THREE, orders), atol=1e-6)
        seen.add(tuple(map(tuple, orders)))
    assert len(seen) > 1  # a fresh random order every step
    # By hand for task 1: order (2, 3) gives (0.5, 0); order (3, 2) gives (0.5, 0.5).
    a = _reference(THREE, [[1, 2], [0, 2], [0, 1]])
    b = _reference(THREE, [[2, 1], [0, 2], [0, 1]])
    np.testing.assert_allclose(b - a, [0.0, 0.5])


def test_all_possible_orders_are_the_only_outcomes():
    outcomes = {tuple(np.round(_reference(THREE, orders), 6))
                for orders in itertools.product(*[list(itertools.permutations([j for j in range(3) if j != i]))
                                                  for i in range(3)])}
    for seed in range(5):
        out, _ = _run(pcgrad(jax.random.PRNGKey(seed), 3, {"w": True}), {"w": jnp.asarray(THREE)})
        assert tuple(np.round(np.asarray(out["w"]), 6)) in outcomes


def test_non_conflicting_gradients_are_summed_unchanged():
    g = {"w": jnp.array([[1.0, 2.0], [0.5, 0.0], [0.0, 3.0]])}
    out, state = _run(pcgrad(jax.random.PRNGKey(0), 3, {"w": True}), g)
    np.testing.assert_allclose(out["w"], [1.5, 5.0])
    assert int(state.num_conflicts) == 0


def test_task_specific_parameters_keep_their_own_gradient():
    # Heads: each task's gradient is non-zero only on its own head; they must not be projected
    # (projecting the flattened vector would leak one head's gradient into the other).
    g = {"shared": jnp.array([[1.0, 0.0], [-1.0, 1.0]]),
         "head_a": jnp.array([[5.0, -5.0], [0.0, 0.0]]),
         "head_b": jnp.array([[0.0, 0.0], [7.0, 7.0]])}
    shared = {"shared": True, "head_a": False, "head_b": False}
    out, _ = _run(pcgrad(jax.random.PRNGKey(0), 2, shared), g)
    np.testing.assert_allclose(out["head_a"], [5.0, -5.0])
    np.testing.assert_allclose(out["head_b"], [7.0, 7.0])
    np.testing.assert_allclose(out["shared"], [0.5, 1.5], atol=1e-6)
    # The mean reduction averages the projected shared gradients only; a head keeps its task's
    # gradient (the PyTorch port's merged_grad[~shared] = sum), it is not divided by T.
    mean, _ = _run(pcgrad(jax.random.PRNGKey(0), 2, shared, reduction="mean"), g)
    np.testing.assert_allclose(mean["head_a"], [5.0, -5.0])
    np.testing.assert_allclose(mean["head_b"], [7.0, 7.0])
    np.testing.assert_allclose(mean["shared"], [0.25, 0.75], atol=1e-6)
    # The shared mask may also be a function of the parameters.
    fn_out, _ = _run(pcgrad(jax.random.PRNGKey(0), 2, lambda p: shared), g)
    np.testing.assert_allclose(fn_out["shared"], out["shared"])


def test_zero_norm_gradient_is_guarded():
    g = {"w": jnp.array([[1.0, 0.0], [0.0, 0.0]])}
    out, state = _run(pcgrad(jax.random.PRNGKey(0), 2, {"w": True}), g)
    np.testing.assert_allclose(out["w"], [1.0, 0.0])
    assert np.isfinite(np.asarray(state.cosines)).all()


def test_inside_pmap_and_in_a_chain():
    tx = optax.chain(pcgrad(jax.random.PRNGKey(0), 2, {"w": True}), optax.sgd(1.0))
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    n = jax.local_device_count()
    rep = lambda x: jnp.broadcast_to(x, (n,) + x.shape)  # noqa: E731
    updates, _ = jax.pmap(tx.update)(
        {"w": rep(jnp.array([[1.0, 0.0], [-1.0, 1.0]]))}, jax.tree_util.tree_map(rep, state),
        jax.tree_util.tree_map(rep, params))
    np.testing.assert_allclose(updates["w"][0], [-0.5, -1.5], atol=1e-6)


def test_sum_and_mean():
    g = {"w": jnp.array([[1.0, 2.0], [3.0, -4.0]])}
    np.testing.assert_allclose(_run(sum_tasks(), g)[0]["w"], [4.0, -2.0])
    np.testing.assert_allclose(_run(mean_tasks(), g)[0]["w"], [2.0, -1.0])


def test_misuse_raises_clear_errors():
    params = {"w": jnp.zeros(2)}
    tx = pcgrad(jax.random.PRNGKey(0), 2, {"w": True})
    with pytest.raises(TaskAxisError, match="leading task axis"):
        tx.update({"w": jnp.zeros(2)}, tx.init(params), params)  # a plain gradient, no task axis
    with pytest.raises(TaskAxisError, match="built for 2 tasks"):
        tx.update({"w": jnp.zeros((3, 2))}, tx.init(params), params)
    with pytest.raises(TaskAxisError, match="two or more tasks"):
        pcgrad(jax.random.PRNGKey(0), 1, {"w": True})  # a one-task-per-step schedule
    with pytest.raises(TaskAxisError, match="leading task axis"):
        sum_tasks().update({"w": jnp.zeros(())}, optax.EmptyState())
