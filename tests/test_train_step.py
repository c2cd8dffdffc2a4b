"""The per-task gradient function: a frozen encoder is not differentiated, and nothing else changes."""

from __future__ import annotations

import jax
import numpy as np

from mtbert_jax import distributed
from mtbert_jax.bert_config import BertConfig
from mtbert_jax.model_config import ModelConfig
from mtbert_jax.multitask_model import init_model
from mtbert_jax.train_step import make_task_grad

TINY = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64)


def test_frozen_encoder_gets_zero_gradient_and_the_rest_is_unchanged():
    config = ModelConfig(tasks=("quora",), adapter="pals", adapter_size=16, adapter_heads=2)
    model, params = init_model(TINY, config, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    mask = (np.arange(12)[None] < rng.integers(4, 13, (8, 1))).astype(np.int32)
    batch = distributed.split_for_devices({
        "input_ids": rng.integers(5, 60, (8, 12)).astype(np.int32) * mask,
        "token_type_ids": np.zeros((8, 12), np.int32), "attention_mask": mask,
        "labels": rng.integers(0, 2, 8).astype(np.int32), "weights": np.ones(8, np.float32)})
    replicated = distributed.replicate(params)
    args = (replicated, None, batch, 0, jax.random.PRNGKey(1))
    full_grad, full_loss, _ = make_task_grad(model, "quora", 0)(*args)
    grad, loss, _ = make_task_grad(model, "quora", 0, frozen=("bert",))(*args)

    np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
    assert jax.tree_util.tree_structure(grad) == jax.tree_util.tree_structure(full_grad)
    assert all(not np.any(g) for g in jax.tree_util.tree_leaves(grad["bert"]))
    assert any(np.any(g) for g in jax.tree_util.tree_leaves(full_grad["bert"]))
    for name in params:
        if name != "bert":  # adapters and head: the same gradient either way (dropout keys alike)
            for a, b in zip(jax.tree_util.tree_leaves(grad[name]), jax.tree_util.tree_leaves(full_grad[name])):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
