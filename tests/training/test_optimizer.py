"""Learning rates per parameter group (the encoder, the task parts, the task-specific top
layers), and GSE's two updates per step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtbert_jax.model.config import ModelConfig
from mtbert_jax.model.multitask import init_model
from mtbert_jax.synthetic import tiny_bert_config
from mtbert_jax.training import distributed
from mtbert_jax.training.optimizer import Optimizer, OptimizerConfig
from mtbert_jax.training.step import StepRunner, TrainState


def _moves_after_two_steps(config: OptimizerConfig) -> dict:
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
    return {
        "encoder": moved["bert"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"],
        "head": moved["heads_sst"]["dense"]["kernel"],
        "adapter": moved["adapters_sts"]["down"]["kernel"],
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


def _gse_moves(total_steps: int, grads: tuple) -> list:
    """How far the parameters move in each of `total_steps` GSE steps of constant gradients."""
    params = {"bert": {"w": jnp.zeros(3)}, "heads_a": {"w": jnp.zeros(2)}, "heads_b": {"w": jnp.zeros(2)}}
    config = OptimizerConfig(combiner="gse", encoder_lr=1e-2, task_lr=1e-2, warmup_fraction=0.1,
                             weight_decay=0.0, max_grad_norm=0.0)
    optimizer = Optimizer(config, params, ("a", "b"), total_steps, 2)
    update = StepRunner(None, optimizer, (), {}).update
    state = distributed.replicate(TrainState.create(params, optimizer))
    grads, weights = distributed.replicate(grads), distributed.replicate(jnp.ones(2))
    moves = []
    for _ in range(total_steps):
        before = distributed.unreplicate(state.params)
        state, metrics = update(state, grads, weights)
        after = distributed.unreplicate(state.params)
        moves.append({k: np.abs(np.asarray(after[k]["w"] - before[k]["w"])) for k in after})
        moves[-1]["metrics"] = jax.tree_util.tree_map(lambda x: np.asarray(x[0]), metrics)
        moves[-1]["param_norm"] = float(np.sqrt(sum(np.sum(np.square(v["w"])) for v in after.values())))
    return moves


def test_gse_is_a_pcgrad_update_then_a_summed_update_each_step():
    # Orthogonal task gradients: PCGrad leaves them as they are, so both updates of a step use
    # the summed gradient, and each is an AdamW step of the learning rate for its update count
    # (Adam's m / sqrt(v) is 1 for a constant gradient). 10 steps: 20 updates, 2 of warm-up.
    grads = ({"bert": {"w": jnp.array([1.0, 0.0, 0.0])}, "heads_a": {"w": jnp.ones(2)}, "heads_b": {"w": jnp.zeros(2)}},
             {"bert": {"w": jnp.array([0.0, 2.0, 0.0])}, "heads_a": {"w": jnp.zeros(2)}, "heads_b": {"w": jnp.ones(2)}})
    moves = _gse_moves(10, grads)
    rates = [0.0, 0.5e-2] + [1e-2 * (1 - k / 18) for k in range(18)]  # 2 warm-up, 18 decaying
    for step, move in enumerate(moves):
        expected = rates[2 * step] + rates[2 * step + 1]
        np.testing.assert_allclose(move["bert"][:2], expected, rtol=1e-4, err_msg=f"step {step}")
        np.testing.assert_allclose(move["heads_a"], expected, rtol=1e-4, err_msg=f"step {step}")
        assert move["bert"][2] == 0.0  # no task moves it
        # What the step logs: the learning rate of its first update (a schedule that runs at
        # twice the speed shows from the first record on), the update and parameter norms.
        metrics = move["metrics"]
        np.testing.assert_allclose(metrics["lr/encoder"], rates[2 * step], rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(metrics["lr/task"], rates[2 * step], rtol=1e-5, atol=1e-9)
        assert "lr/top_layer" not in metrics  # no parameter of that group
        total_move = np.sqrt(sum(np.sum(np.square(v)) for k, v in move.items() if k in ("bert", "heads_a", "heads_b")))
        np.testing.assert_allclose(metrics["update_norm"], total_move, rtol=1e-4)
        np.testing.assert_allclose(metrics["param_norm"], move["param_norm"], rtol=1e-5)
        np.testing.assert_allclose(metrics["grad_norm"], [np.sqrt(3.0), np.sqrt(6.0)], rtol=1e-6)
    assert moves[-1]["bert"][0] > 0  # the learning rate reaches zero only at the run's end
