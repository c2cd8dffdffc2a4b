"""Weight averaging (optimizer.ema_decay): the average by hand, what evaluation and the best
checkpoint use, and checkpoints from before it existed."""

from __future__ import annotations

import functools
import json
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

import evaluate
from conftest import quadratic_task_gradients, tiny_training_config
from mtbert_jax.run.checkpointing import Checkpoints, restore_trained
from mtbert_jax.run.loop import train_and_evaluate
from mtbert_jax.training import distributed
from mtbert_jax.training.optimizer import Optimizer, OptimizerConfig
from mtbert_jax.training.step import AXIS, TrainState, ema_decay, train_step


def test_the_decay_warms_up_over_the_first_steps():
    np.testing.assert_allclose([float(ema_decay(0.99, t)) for t in (0, 1, 10, 1000)],
                               [1 / 10, 2 / 11, 11 / 20, 0.99], rtol=1e-6)


@pytest.mark.parametrize("combiner", ["sum", "gse"])
def test_the_average_follows_the_parameters_once_per_step(combiner):
    """Against the average computed by hand from the parameters after each step; GSE's two
    updates per step move the average once, with the step's final parameters."""
    params = {k: {"w": jnp.zeros(3 if k == "bert" else 2)} for k in ("bert", "heads_a", "heads_b")}
    config = OptimizerConfig(combiner=combiner, encoder_lr=0.1, task_lr=0.1, warmup_fraction=0.0,
                             weight_decay=0.0, max_grad_norm=0.0, ema_decay=0.6)
    steps = 5
    optimizer = Optimizer(config, params, ("a", "b"), steps, 2)
    step = jax.pmap(functools.partial(train_step, gradients=quadratic_task_gradients(), optimizer=optimizer),
                    axis_name=AXIS, in_axes=(0, 0, None, 0))
    state = distributed.replicate(TrainState.create(params, optimizer))
    batches = distributed.replicate({"a": {"x": jnp.zeros(1)}, "b": {"x": jnp.zeros(1)}})
    weights = distributed.replicate(jnp.ones(2))
    expected = jax.tree_util.tree_map(np.asarray, params)
    for t in range(steps):
        state, _ = step(state, batches, jax.random.PRNGKey(0), weights)
        now = distributed.unreplicate(state)
        decay = min(0.6, (1 + t) / (10 + t))
        expected = jax.tree_util.tree_map(lambda a, p: decay * a + (1 - decay) * np.asarray(p), expected, now.params)
        for k in expected:
            np.testing.assert_allclose(now.average[k]["w"], expected[k]["w"], rtol=1e-6, atol=1e-7, err_msg=k)
    assert int(now.step) == steps
    assert now.evaluated is now.average
    # The average really lags: after five steps it is not the parameters.
    assert np.abs(np.asarray(now.average["bert"]["w"]) - np.asarray(now.params["bert"]["w"])).max() > 1e-3


def test_a_state_without_an_average_evaluates_its_parameters():
    params = {"heads_a": {"w": jnp.ones(2)}}
    state = TrainState.create(params, Optimizer(OptimizerConfig(), params, ("a",), 4, 1))
    assert state.average is None and state.evaluated is state.params
    assert "average" not in state.saved()


def test_checkpoints_from_before_weight_averaging_resume(tmp_path):
    """A state saved as the four-field TrainState of earlier versions restores into today's."""
    class EarlierTrainState(NamedTuple):
        params: Any
        opt_state: Any
        step: Any
        teacher: Any = None

    checkpoints = Checkpoints(tmp_path)
    earlier = EarlierTrainState({"w": jnp.arange(3.0)}, (jnp.zeros(2),), jnp.int32(7))
    checkpoints.save(7, {"train": earlier, "loader": {"epoch": jnp.int32(1)}}, {"step": 7})
    target = TrainState({"w": jnp.zeros(3)}, (jnp.ones(2),), jnp.int32(0))
    restored = checkpoints.restore(checkpoints.latest, 7, {"train": target.saved(), "loader": {"epoch": jnp.int32(0)}})
    state = TrainState.from_saved(restored["train"])
    np.testing.assert_array_equal(state.params["w"], [0.0, 1.0, 2.0])
    assert int(state.step) == 7 and state.average is None
    checkpoints.close()


def test_evaluation_and_the_best_checkpoint_use_the_average(tiny_checkpoint, tiny_data_dir, tmp_path):
    """A tiny run with the average on: evaluate.py's dev score from the best checkpoint equals
    the score the run logged, and that checkpoint's parameters are the average, not the
    parameters trained."""
    config = tiny_training_config(tiny_checkpoint, tiny_data_dir, tmp_path / "cache", num_epochs=2,
                                  schedule__kind="all_tasks_until_smallest", optimizer__ema_decay=0.9)
    train_and_evaluate(config, tmp_path / "run")
    _, evaluated, step = restore_trained(tmp_path / "run", "best")
    checkpoints = Checkpoints(tmp_path / "run")
    saved = checkpoints.best.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state["train"]
    checkpoints.close()
    flat = lambda tree: traverse_util.flatten_dict(tree, sep="/")  # noqa: E731
    for name, value in flat(evaluated).items():
        np.testing.assert_array_equal(value, flat(saved["average"])[name], err_msg=name)
    moved = max(np.abs(np.asarray(v) - np.asarray(flat(saved["params"])[k])).max() for k, v in flat(evaluated).items())
    assert moved > 1e-4

    assert evaluate.main(["--workdir", str(tmp_path / "run"), "--split", "dev"]) == 0
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best = max((r for r in records if "dev" in r), key=lambda r: r["dev_overall"])
    assert metrics["dev"]["overall"] == pytest.approx(best["dev_overall"], abs=1e-6)


def test_each_dev_record_also_scores_the_parameters_trained(tiny_checkpoint, tiny_data_dir, tmp_path):
    """The average does not change training, so a run with it on logs, as its unaveraged score,
    what the same run with it off logs as its score, epoch by epoch."""
    common = dict(num_epochs=2, schedule__kind="all_tasks_until_smallest")
    runs = {}
    for name, decay in (("averaged", 0.9), ("plain", 0.0)):
        config = tiny_training_config(tiny_checkpoint, tiny_data_dir, tmp_path / "cache",
                                      optimizer__ema_decay=decay, **common)
        train_and_evaluate(config, tmp_path / name)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        runs[name] = [r for r in map(json.loads, lines) if "dev" in r]
    assert len(runs["averaged"]) == len(runs["plain"]) == 2
    for averaged, plain in zip(runs["averaged"], runs["plain"]):
        assert "dev_unaveraged" not in plain
        assert averaged["dev_unaveraged_overall"] == pytest.approx(plain["dev_overall"], abs=1e-5)
        for task, metrics in plain["dev"].items():
            for metric, value in metrics.items():
                assert averaged["dev_unaveraged"][task][metric] == pytest.approx(value, abs=1e-5), (task, metric)
    assert any(a["dev_overall"] != pytest.approx(a["dev_unaveraged_overall"], abs=1e-6) for a in runs["averaged"])
