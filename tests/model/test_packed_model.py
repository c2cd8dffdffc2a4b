"""A packed batch computes what the padded batch computes: outputs, losses and gradients, for
every pooling, pair head and adapter, with dropout on, SMART and MNRL included."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mtbert_jax.data.batching import TaskBatcher
from mtbert_jax.data.packing import PackedBatcher
from mtbert_jax.data.tokenized import Segments, TaskData
from mtbert_jax.evaluation.predict import make_predict, predict
from mtbert_jax.model.config import ADAPTERS, PAIR_HEADS, POOLINGS, ModelConfig
from mtbert_jax.model.multitask import init_model
from mtbert_jax.synthetic import tiny_bert_config
from mtbert_jax.training.objectives import MnrlConfig, ObjectiveConfig, make_objective
from mtbert_jax.training.smart import SmartConfig

DROPOUT = tiny_bert_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
TASKS = ("sst", "quora", "sts")
SLOTS, ROW_LENGTH = 12, 40


def _data(task: str, sides: int, n: int = 14, seed: int = 0) -> TaskData:
    rng = np.random.default_rng(seed)

    def side():
        lengths = rng.integers(3, 21, size=n)
        return Segments.from_lists([rng.integers(5, 60, size=k).astype(np.int32) for k in lengths],
                                   [(np.arange(k) >= k // 2).astype(np.int32) for k in lengths])

    labels = rng.uniform(0, 5, n).astype(np.float32) if task == "sts" else \
        rng.integers(0, 5 if task == "sst" else 2, n).astype(np.int32)
    labels[:3] = 5.0 if task == "sts" else 1  # MNRL has positive pairs to rank
    return TaskData(task, "train", np.asarray([f"r{i}" for i in range(n)]), labels,
                    tuple(side() for _ in range(sides)), 0, [])


def _both(config: ModelConfig, task: str):
    """The same records (10 of 12 slots filled) as a padded and as a packed batch."""
    data = _data(task, 2 if config.pair_encoding(task) == "bi" else 1)
    indices = np.random.default_rng(1).permutation(len(data))[:10]
    padded = TaskBatcher(data, SLOTS, (ROW_LENGTH,)).make_batch(indices)
    packed = PackedBatcher(data, SLOTS, ROW_LENGTH, unique_texts=len(data.segments) > 1).make_batch(indices)
    assert packed["input_ids"].size < padded["input_ids"].size  # it did pack
    drop = lambda b: {k: v for k, v in b.items() if k != "index"}  # noqa: E731
    return drop(padded), drop(packed)


def _configs():
    for pooling in POOLINGS:
        yield ModelConfig(tasks=TASKS, pooling=pooling)
    for head in PAIR_HEADS:
        yield ModelConfig(tasks=TASKS, pair_heads={"quora": head, "sts": head}, pooling="mean")
    for adapter in ADAPTERS[1:]:
        yield ModelConfig(tasks=TASKS, adapter=adapter, adapter_size=12, adapter_heads=3)
    yield ModelConfig(tasks=TASKS, shared_pair_hidden=True,
                      pair_heads={"quora": "bi_concat_diff_prod", "sts": "bi_concat_diff_prod"})


CONFIGS = list(_configs())


def _name(c: ModelConfig) -> str:
    return f"{c.pooling}-{c.pair_head('quora')}-{c.adapter}" + ("-shared" if c.shared_pair_hidden else "")


@pytest.mark.parametrize("config", CONFIGS, ids=_name)
def test_packed_outputs_equal_padded_outputs_with_dropout_on(config):
    model, params = init_model(DROPOUT, config, jax.random.PRNGKey(0))
    for task in TASKS:
        padded, packed = _both(config, task)
        outputs = [model.apply({"params": params}, task, b, deterministic=False,
                               rngs={"dropout": jax.random.PRNGKey(5)}) for b in (padded, packed)]
        for a, b in zip(jax.tree_util.tree_leaves(outputs[0]), jax.tree_util.tree_leaves(outputs[1])):
            np.testing.assert_allclose(np.asarray(b)[:10], np.asarray(a)[:10], atol=1e-5, err_msg=task)
        # and dropout did act: another key changes the outputs
        other = model.apply({"params": params}, task, packed, deterministic=False,
                            rngs={"dropout": jax.random.PRNGKey(6)})
        assert not np.allclose(np.asarray(other.prediction)[:10], np.asarray(outputs[1].prediction)[:10])


@pytest.mark.parametrize("config", [CONFIGS[POOLINGS.index("max")], CONFIGS[len(POOLINGS) + 2],
                                    CONFIGS[len(POOLINGS) + len(PAIR_HEADS)]], ids=_name)
def test_packed_loss_and_gradient_equal_padded_with_smart_and_mnrl(config):
    """SMART (noise per token, ascent normalised per example) and MNRL (same-text check on a
    hash in packed batches) on; dropout on; two filler slots (max pooling gives them 0, not
    -3.4e38, which head dropout would overflow to NaN)."""
    mnrl = tuple(t for t in ("quora", "sts") if config.pair_encoding(t) == "bi")
    objective = ObjectiveConfig(smart=SmartConfig(tasks=TASKS, sigma=1e-3, eps=1e-2),
                                mnrl=MnrlConfig(tasks=mnrl))
    model, params = init_model(DROPOUT, config, jax.random.PRNGKey(0))
    teacher = jax.tree_util.tree_map(lambda x: x * 1.01, params)
    for task in TASKS:
        loss = make_objective(model, task, objective)
        padded, packed = _both(config, task)
        results = [jax.value_and_grad(lambda p, b=b: loss(p, teacher, b, jax.random.PRNGKey(3))[0])(params)
                   for b in (padded, packed)]
        assert np.isfinite(results[0][0]) and np.isfinite(results[1][0]), task
        np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5, err_msg=task)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(results[0][1]),
                                jax.tree_util.tree_leaves(results[1][1])):
            np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4, err_msg=f"{task} {jax.tree_util.keystr(path)}")


def test_packed_evaluation_gives_file_order_predictions():
    config = ModelConfig(tasks=TASKS, pair_heads={"quora": "cross", "sts": "bi_concat"})
    model, params = init_model(DROPOUT, config, jax.random.PRNGKey(0))
    predict_fn = make_predict(model)
    from mtbert_jax.data.packing import BatchLayout
    for task, sides in (("sst", 1), ("quora", 1), ("sts", 2)):
        data = _data(task, sides, n=57, seed=2)
        padded = predict(predict_fn, params, data, 8, (ROW_LENGTH,))
        packed = predict(predict_fn, params, data, 8, BatchLayout((ROW_LENGTH,), packing=True))
        np.testing.assert_allclose(packed, padded, atol=1e-5, err_msg=task)
