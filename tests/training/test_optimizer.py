"""Learning rates per parameter group (the encoder, the task parts, the task-specific top
layers), and GSE's two updates per step against a numpy GSE."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import A_TARGET, B_TARGET, quadratic_task_gradients
from mtbert_jax.model.config import ModelConfig
from mtbert_jax.model.multitask import init_model
from mtbert_jax.synthetic import tiny_bert_config
from mtbert_jax.training import distributed
from mtbert_jax.training.optimizer import Optimizer, OptimizerConfig
from mtbert_jax.training.step import AXIS, TrainState, train_step


def _moves_after_two_steps(config: OptimizerConfig, whole: bool = False) -> dict:
    """How far each group's parameters move in two steps of a constant all-ones gradient.

    With no warm-up worth the name (step 0 has rate 0) and no decay, clipping or weight decay,
    Adam's second step moves every parameter by its group's peak rate (m / sqrt(v) = 1)."""
    model_config = ModelConfig(tasks=("sst", "sts"), adapter="low_rank_top_layer", adapter_size=8)
    _, params = init_model(tiny_bert_config(), model_config, jax.random.PRNGKey(0))
    tx = Optimizer(config, params, ("sst", "sts"), total_steps=1000, num_tasks_per_step=1).base
    state = tx.init(params)
    ones = jax.tree_util.tree_map(jnp.ones_like, params)
    current = params
    for _ in range(2):
        updates, state = tx.update(ones, state, current)
        current = jax.tree_util.tree_map(lambda p, u: p + u, current, updates)
    moved = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))), params, current)
    if whole:
        return moved
    return {
        "encoder": moved["bert"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"],
        "head": moved["heads_sst"]["dense"]["kernel"],
        "adapter": moved["adapters_sts"]["low_rank_0"]["down"]["kernel"],
        "top_layer": moved["adapters_sts"]["top_layer"]["attention"]["self"]["query"]["kernel"],
    }


@pytest.mark.parametrize("top_layer_lr, expected_top", [(None, 1e-3), (2e-5, 2e-5)])
def test_each_group_moves_by_its_own_learning_rate(top_layer_lr, expected_top):
    config = OptimizerConfig(encoder_lr=1e-4, task_lr=1e-3, top_layer_lr=top_layer_lr,
                             warmup_fraction=0.0, weight_decay=0.0, max_grad_norm=0.0)
    moves = _moves_after_two_steps(config)
    np.testing.assert_allclose(moves["encoder"], 1e-4, rtol=1e-3)
    np.testing.assert_allclose(moves["head"], 1e-3, rtol=1e-3)
    np.testing.assert_allclose(moves["adapter"], 1e-3, rtol=1e-3)  # low-rank adapters: task rate
    np.testing.assert_allclose(moves["top_layer"], expected_top, rtol=1e-3)


def test_layer_wise_decay_scales_the_encoders_rate_by_depth():
    """decay 0.5 over the tiny encoder's 2 layers: top layer and pooler 1e-4, layer 0 5e-5, the
    embeddings 2.5e-5; the task parts keep theirs."""
    config = OptimizerConfig(encoder_lr=1e-4, task_lr=1e-3, layer_lr_decay=0.5, warmup_fraction=0.0,
                             weight_decay=0.0, max_grad_norm=0.0)
    moved = _moves_after_two_steps(config, whole=True)
    bert = moved["bert"]
    assert len(bert["encoder"]) == 2
    np.testing.assert_allclose(bert["encoder"]["layer_1"]["attention"]["self"]["query"]["kernel"], 1e-4, rtol=1e-3)
    np.testing.assert_allclose(bert["pooler"]["dense"]["kernel"], 1e-4, rtol=1e-3)
    np.testing.assert_allclose(bert["encoder"]["layer_0"]["output"]["dense"]["kernel"], 5e-5, rtol=1e-3)
    np.testing.assert_allclose(bert["embeddings"]["word_embeddings"]["embedding"], 2.5e-5, rtol=1e-3)
    np.testing.assert_allclose(moved["heads_sst"]["dense"]["kernel"], 1e-3, rtol=1e-3)
    np.testing.assert_allclose(moved["adapters_sts"]["top_layer"]["attention"]["self"]["query"]["kernel"],
                               1e-3, rtol=1e-3)  # a task part, not the encoder


def _adam(state, grad, lr):
    """optax.adamw without weight decay, by hand: returns (update, state)."""
    m, v, n = state
    m, v, n = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad ** 2, n + 1
    return -lr * (m / (1 - 0.9 ** n)) / (np.sqrt(v / (1 - 0.999 ** n)) + 1e-8), (m, v, n)


def _gse_by_hand(steps, schedule, reduction="mean", fresh=True):
    """Seed 002's GSE: a PCGrad update ("the mean of the adjusted gradients"), then an update
    with the combined loss's gradient at the parameters after the first (fresh=True)."""
    theta = {k: np.zeros_like(v) for k, v in A_TARGET.items()}
    adam = {k: (np.zeros_like(v), np.zeros_like(v), 0) for k, v in theta.items()}
    count = 0

    def gradients(theta):
        ga = {k: theta[k] - A_TARGET[k] if k in ("bert", "heads_a") else np.zeros_like(theta[k]) for k in theta}
        gb = {k: theta[k] - B_TARGET[k] if k in ("bert", "heads_b") else np.zeros_like(theta[k]) for k in theta}
        return ga, gb

    def apply(theta, adam, grad, count):
        out, new_adam = {}, {}
        for k in theta:
            update, new_adam[k] = _adam(adam[k], grad[k], float(schedule(count)))
            out[k] = theta[k] + update
        return out, new_adam

    for _ in range(steps):
        ga, gb = gradients(theta)
        sa, sb = ga["bert"], gb["bert"]
        dot = sa @ sb
        pa = sa - dot / (sb @ sb) * sb if dot < 0 else sa
        pb = sb - dot / (sa @ sa) * sa if dot < 0 else sb
        first = {"bert": (pa + pb) / (2 if reduction == "mean" else 1),
                 "heads_a": ga["heads_a"], "heads_b": gb["heads_b"]}
        theta_1, adam = apply(theta, adam, first, count)
        ga2, gb2 = gradients(theta_1) if fresh else (ga, gb)
        theta, adam = apply(theta_1, adam, {k: ga2[k] + gb2[k] for k in theta}, count + 1)
        count += 2
    return theta


def test_gse_is_a_mean_pcgrad_update_then_a_fresh_combined_loss_update():
    """Conflicting task gradients, against a numpy GSE: tells it apart from PCGrad's sum
    reduction and from a second update that reuses the first update's gradient."""
    params = {k: {"w": jnp.zeros_like(jnp.asarray(v, jnp.float32))} for k, v in A_TARGET.items()}
    config = OptimizerConfig(combiner="gse", encoder_lr=0.1, task_lr=0.1, warmup_fraction=0.0,
                             weight_decay=0.0, max_grad_norm=0.0)
    steps = 4
    optimizer = Optimizer(config, params, ("a", "b"), steps, 2)
    assert config.reduction == "mean"
    step = jax.pmap(functools.partial(train_step, gradients=quadratic_task_gradients(), optimizer=optimizer),
                    axis_name=AXIS, in_axes=(0, 0, None, 0))
    state = distributed.replicate(TrainState.create(params, optimizer))
    batches = distributed.replicate({"a": {"x": jnp.zeros(1)}, "b": {"x": jnp.zeros(1)}})
    weights = distributed.replicate(jnp.ones(2))
    for _ in range(steps):
        state, metrics = step(state, batches, jax.random.PRNGKey(0), weights)
    assert int(distributed.unreplicate(state.step)) == steps  # one step, two updates
    got = {k: np.asarray(v["w"]) for k, v in distributed.unreplicate(state.params).items()}
    schedule = optimizer.schedules["encoder"]
    expected = _gse_by_hand(steps, schedule)
    for k in got:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for wrong in (_gse_by_hand(steps, schedule, reduction="sum"), _gse_by_hand(steps, schedule, fresh=False)):
        assert max(np.abs(wrong[k] - expected[k]).max() for k in got) > 1e-3
    # The second forward's losses are logged: each task's loss after the first update.
    assert set(jax.tree_util.tree_map(lambda x: x[0], metrics)["gse/loss"]) == {"a", "b"}
