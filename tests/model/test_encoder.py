"""Encoder behaviour beyond parity: masking, dropout, bfloat16, the adapter hook."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtbert_jax.model.bert_config import BertConfig
from mtbert_jax.model.encoder import BertModel, init_params
from mtbert_jax.synthetic import tiny_bert_config

CONFIG = tiny_bert_config(vocab_size=100)


@pytest.fixture(scope="module")
def params():
    return init_params(CONFIG, jax.random.PRNGKey(0))


def _batch(seq=10, pad=0):
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, size=(3, seq)).astype(np.int32)
    types = np.zeros_like(ids)
    types[:, seq // 2:] = 1
    mask = np.ones_like(ids)
    return (np.pad(ids, ((0, 0), (0, pad))), np.pad(types, ((0, 0), (0, pad))),
            np.pad(mask, ((0, 0), (0, pad))))


def test_shapes(params):
    out = BertModel(CONFIG).apply({"params": params}, *_batch())
    assert out.sequence_output.shape == (3, 10, 32) and out.pooled_output.shape == (3, 32)


def test_padding_does_not_change_real_positions(params):
    model = BertModel(CONFIG)
    plain = model.apply({"params": params}, *_batch())
    padded = model.apply({"params": params}, *_batch(pad=6))
    np.testing.assert_allclose(padded.sequence_output[:, :10], plain.sequence_output, atol=1e-6)
    np.testing.assert_allclose(padded.pooled_output, plain.pooled_output, atol=1e-6)


def test_all_padding_row_stays_finite(params):
    ids, types, mask = _batch()
    mask[1] = 0
    out = BertModel(CONFIG).apply({"params": params}, ids, types, mask)
    assert np.isfinite(np.asarray(out.sequence_output)).all()


def test_dropout_only_in_training(params):
    model = BertModel(CONFIG)
    batch = _batch()
    eval_out = model.apply({"params": params}, *batch)
    train = lambda key: model.apply({"params": params}, *batch, deterministic=False,  # noqa: E731
                                    rngs={"dropout": key}).sequence_output
    a, b = train(jax.random.PRNGKey(1)), train(jax.random.PRNGKey(2))
    assert not np.allclose(a, b) and not np.allclose(a, eval_out.sequence_output)
    np.testing.assert_array_equal(train(jax.random.PRNGKey(1)), a)


def test_parts_compose_to_the_whole(params):
    model = BertModel(CONFIG)
    ids, types, mask = _batch()
    whole = model.apply({"params": params}, ids, types, mask)
    x = model.apply({"params": params}, ids, types, method=BertModel.embed)
    seq = model.apply({"params": params}, x, mask, method=BertModel.encode)
    np.testing.assert_array_equal(seq, whole.sequence_output)


def test_bfloat16_compute_keeps_float32_params_and_stays_close(params):
    config16 = CONFIG.replace(compute_dtype="bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(
        init_params(config16, jax.random.PRNGKey(0))))
    out32 = BertModel(CONFIG).apply({"params": params}, *_batch())
    out16 = BertModel(config16).apply({"params": params}, *_batch())
    assert out16.sequence_output.dtype == jnp.bfloat16
    # Post-LayerNorm outputs have unit scale; bfloat16 has ~3 significant digits.
    diff = np.abs(np.asarray(out16.sequence_output, np.float32) - np.asarray(out32.sequence_output))
    assert diff.max() < 0.1 and diff.mean() < 0.02


def test_bfloat16_gradients_follow_float32(params):
    """Every parameter's gradient through the bf16 products' custom VJPs (dense layers and
    both attention products) points where float32 autodiff's does."""
    config16 = CONFIG.replace(compute_dtype="bfloat16")
    ids, types, mask = _batch(pad=3)
    w = jax.random.normal(jax.random.PRNGKey(7), (3, 13, CONFIG.hidden_size))

    def loss(p, config):
        out = BertModel(config).apply({"params": p}, ids, types, mask)
        return jnp.sum(w * out.sequence_output.astype(jnp.float32)) + jnp.sum(out.pooled_output)

    g32 = jax.grad(loss)(params, CONFIG)
    g16 = jax.grad(loss)(params, config16)
    flat32, flat16 = jax.tree_util.tree_leaves_with_path(g32), jax.tree_util.tree_leaves(g16)
    for (path, a), b in zip(flat32, flat16):
        assert b.dtype == jnp.float32
        # (+1e-3: the key bias's gradient is zero in exact arithmetic, softmax ignoring a
        # constant added to a row's scores; both sides hold rounding noise there.)
        err, scale = float(jnp.linalg.norm(b - a)), float(jnp.linalg.norm(a))
        assert err < 0.05 * scale + 1e-3, (jax.tree_util.keystr(path), err, scale)


class _WithParallelBranch(nn.Module):
    """A parent that adds its own per-layer term inside the encoder, as PALs will."""

    config: BertConfig
    scale: float

    def setup(self):
        self.bert = BertModel(self.config)
        self.branch = [nn.Dense(self.config.hidden_size, name=f"branch_{i}")
                       for i in range(self.config.num_hidden_layers)]

    def __call__(self, ids, types, mask):
        return self.bert(ids, types, mask,
                         residual_fn=lambda i, h: self.scale * self.branch[i](h))


def test_residual_hook_is_wired_in_parallel(params):
    batch = _batch()
    plain = BertModel(CONFIG).apply({"params": params}, *batch)
    module = _WithParallelBranch(CONFIG, scale=0.0)
    variables = module.init(jax.random.PRNGKey(3), *batch)
    variables = {"params": {**variables["params"], "bert": params}}
    np.testing.assert_array_equal(module.apply(variables, *batch).sequence_output,
                                  plain.sequence_output)
    changed = _WithParallelBranch(CONFIG, scale=1.0).apply(variables, *batch)
    assert not np.allclose(changed.sequence_output, plain.sequence_output)
    grads = jax.grad(lambda p: _WithParallelBranch(CONFIG, 1.0).apply(
        {"params": p}, *batch).pooled_output.sum())(variables["params"])
    assert all(np.abs(grads[f"branch_{i}"]["kernel"]).sum() > 0 for i in range(2))


def test_too_long_input_is_refused(params):
    ids = np.ones((1, 65), np.int32)
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        BertModel(CONFIG).apply({"params": params}, ids)
