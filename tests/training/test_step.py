"""The per-task gradient function: a frozen encoder is not differentiated, and nothing else changes;
StepRunner's separate programs equal the one-function step; one device sums without an all-reduce."""

from __future__ import annotations

import functools

import jax
import numpy as np

from mtbert_jax.model.config import ModelConfig
from mtbert_jax.model.multitask import init_model
from mtbert_jax.synthetic import synthetic_batch, tiny_bert_config
from mtbert_jax.training import distributed
from mtbert_jax.training.objectives import ObjectiveConfig, make_objective
from mtbert_jax.training.step import AXIS, task_gradient

TINY = tiny_bert_config()


def test_frozen_encoder_gets_zero_gradient_and_the_rest_is_unchanged():
    config = ModelConfig(tasks=("quora",), adapter="pals", adapter_size=16, adapter_heads=2)
    model, params = init_model(TINY, config, jax.random.PRNGKey(0))
    batch = distributed.split_for_devices(synthetic_batch("quora", 8, 12, np.random.default_rng(0)))
    replicated = distributed.replicate(params)
    args = (replicated, None, batch, 0, jax.random.PRNGKey(1))
    def gradient(frozen=()):
        bound = functools.partial(task_gradient, loss_sum=make_objective(model, "quora", ObjectiveConfig()),
                                  task_index=0, frozen=frozen)
        return jax.pmap(bound, axis_name=AXIS, in_axes=(0, 0, 0, None, None))

    full_grad, full_loss, _ = gradient()(*args)
    grad, loss, _ = gradient(frozen=("bert",))(*args)

    np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
    assert jax.tree_util.tree_structure(grad) == jax.tree_util.tree_structure(full_grad)
    assert all(not np.any(g) for g in jax.tree_util.tree_leaves(grad["bert"]))
    assert any(np.any(g) for g in jax.tree_util.tree_leaves(full_grad["bert"]))
    for name in params:
        if name != "bert":  # adapters and head: the same gradient either way (dropout keys alike)
            for a, b in zip(jax.tree_util.tree_leaves(grad[name]), jax.tree_util.tree_leaves(full_grad[name])):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_gse_step_runner_equals_the_module_level_step():
    """StepRunner's separate programs (gradients, first update, gradients again, second update)
    take the same GSE step as the one-function `train_step`."""
    from mtbert_jax.training.optimizer import Optimizer, OptimizerConfig
    from mtbert_jax.training.step import StepRunner, TrainState, train_step

    tasks = ("sst", "sts")
    model, params = init_model(TINY, ModelConfig(tasks=tasks), jax.random.PRNGKey(0))
    optimizer = Optimizer(OptimizerConfig(combiner="gse", encoder_lr=1e-3, warmup_fraction=0.0), params,
                          tasks, 10, 2)
    runner = StepRunner(model, optimizer, tasks, {}, deterministic=True)
    rng = np.random.default_rng(0)
    batches = {t: distributed.split_for_devices(synthetic_batch(t, 8, 12, rng)) for t in tasks}
    fused = jax.pmap(functools.partial(train_step, gradients=runner.gradients, optimizer=optimizer),
                     axis_name=AXIS, in_axes=(0, 0, None, 0))
    key = jax.random.PRNGKey(3)
    a, metrics = runner(distributed.replicate(TrainState.create(params, optimizer)), batches, key)
    b, _ = fused(distributed.replicate(TrainState.create(params, optimizer)), batches, key, runner._weights(tasks))
    assert int(distributed.unreplicate(a.step)) == 1
    assert set(metrics["gse/loss"]) == set(tasks)
    for x, y, p in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params),
                       jax.tree_util.tree_leaves(params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    moved = sum(float(np.abs(np.asarray(x[0]) - np.asarray(p)).sum())
                for x, p in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(params)))
    assert moved > 0


def test_one_device_gradient_has_no_all_reduce():
    """On one device the sum over devices is the value itself: the compiled gradient must not
    carry an all-reduce (XLA:CPU copies every gradient through it), and the gradient must equal
    autodiff's of the mean loss computed without pmap."""
    model, params = init_model(TINY, ModelConfig(tasks=("sst",)), jax.random.PRNGKey(0))
    objective = make_objective(model, "sst", ObjectiveConfig(), True)
    batch = distributed.split_for_devices(synthetic_batch("sst", 8, 12, np.random.default_rng(0)))
    bound = functools.partial(task_gradient, loss_sum=objective, task_index=0)
    pmapped = jax.pmap(bound, axis_name=AXIS, in_axes=(0, 0, 0, None, None), devices=jax.local_devices()[:1])
    args = (distributed.replicate(params), None, batch, 0, jax.random.PRNGKey(1))
    assert "all_reduce" not in pmapped.lower(*args).as_text()
    grad, loss, _ = pmapped(*args)

    one = jax.tree_util.tree_map(lambda x: x[0], batch)
    def mean_loss(p):
        total, count = objective(p, None, one, jax.random.PRNGKey(1))
        return total / count
    expected_loss, expected = jax.value_and_grad(mean_loss)(params)
    np.testing.assert_allclose(loss[0], expected_loss, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-7)
