"""Pair tasks scored in both sentence orders (model.symmetric_pairs) and the configuration of
pair swapping."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mtbert_jax.data.packing import BatchLayout
from mtbert_jax.data.tokenized import Segments, TaskData
from mtbert_jax.errors import ConfigError
from mtbert_jax.evaluation.predict import make_predict, predict
from mtbert_jax.model.config import ModelConfig
from mtbert_jax.model.multitask import init_model
from mtbert_jax.run.config import RunConfig
from mtbert_jax.synthetic import tiny_bert_config


def _pairs(task: str, n: int, bi: bool, seed: int = 0) -> TaskData:
    rng = np.random.default_rng(seed)
    firsts = [rng.integers(5, 60, k) for k in rng.integers(1, 12, n)]
    seconds = [rng.integers(5, 60, k) for k in rng.integers(1, 12, n)]
    if bi:
        side = lambda xs: Segments.from_lists([np.concatenate([[1], x, [2]]) for x in xs],  # noqa: E731
                                              [np.zeros(len(x) + 2, np.int8) for x in xs])
        segments = (side(firsts), side(seconds))
    else:
        segments = (Segments.from_lists(
            [np.concatenate([[1], a, [2], b, [2]]) for a, b in zip(firsts, seconds)],
            [np.repeat([0, 1], [len(a) + 2, len(b) + 1]) for a, b in zip(firsts, seconds)]),)
    return TaskData(task, "dev", np.asarray([f"r{i}" for i in range(n)]), None, segments, 0, [])


@pytest.mark.parametrize("head", ["cross", "bi_concat"])
@pytest.mark.parametrize("packing", [False, True])
def test_symmetric_predictions_are_the_mean_of_both_orders(head, packing):
    model_config = ModelConfig(tasks=("quora", "sts"), pair_heads={"quora": head, "sts": head})
    model, params = init_model(tiny_bert_config(), model_config, jax.random.PRNGKey(0))
    predict_fn = make_predict(model)
    layout = BatchLayout((32,), packing=packing)
    for task in ("quora", "sts"):
        data = _pairs(task, 23, bi=(head != "cross"), seed=1)
        forward = predict(predict_fn, params, data, 8, layout)
        backward = predict(predict_fn, params, data.swapped(), 8, layout)
        assert not np.allclose(forward, backward, rtol=1e-3, atol=0), task  # the model itself is not symmetric
        symmetric = predict(predict_fn, params, data, 8, layout, symmetric_pairs=True)
        np.testing.assert_allclose(symmetric, (forward + backward) / 2, rtol=1e-6, atol=0, err_msg=task)
        either_order = predict(predict_fn, params, data.swapped(), 8, layout, symmetric_pairs=True)
        np.testing.assert_allclose(either_order, symmetric, rtol=1e-5, atol=0, err_msg=task)


def test_swap_pairs_refuses_bi_encoder_heads_and_old_configs_load_without_swapping():
    from configs.default import get_config
    config = get_config()
    config.schedule.swap_pairs = True
    config.model.pair_heads.sts = "bi_concat"
    with pytest.raises(ConfigError, match=r"swap_pairs .* \['sts'\] use bi-encoder heads"):
        RunConfig.from_dict(config)
    saved = get_config().to_dict()
    del saved["schedule"]["swap_pairs"], saved["model"]["symmetric_pairs"]  # a run saved before them
    run = RunConfig.from_dict(saved)
    assert run.schedule.swap_pairs is False and run.model.symmetric_pairs is False
