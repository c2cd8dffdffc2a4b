"""The RngBitGenerator dropout: rate, scaling, determinism, independence of keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtbert_jax.model.dropout import Dropout, keep_mask


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_keep_rate_and_scaling(rate):
    x = jnp.ones((200, 500))
    y = Dropout(rate).apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
    kept = np.asarray(y) != 0
    # 100,000 Bernoulli draws: the kept fraction is within 5 standard deviations of 1 - rate.
    assert abs(kept.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / kept.size)
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / (1 - rate), rtol=1e-6)


def test_deterministic_and_edge_rates():
    x = jnp.arange(12.0).reshape(3, 4)
    assert Dropout(0.3).apply({}, x, deterministic=True) is x
    assert Dropout(0.0).apply({}, x, deterministic=False) is x
    zero = Dropout(1.0).apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
    assert not np.asarray(zero).any()


def test_same_key_same_mask_other_key_other_mask():
    a = keep_mask(jax.random.PRNGKey(1), 0.5, (64, 64))
    b = keep_mask(jax.random.PRNGKey(1), 0.5, (64, 64))
    c = keep_mask(jax.random.PRNGKey(2), 0.5, (64, 64))
    d = keep_mask(jax.random.key(1), 0.5, (64, 64))  # new-style typed keys give the same bits
    assert np.array_equal(a, b) and np.array_equal(a, d)
    assert 0.4 < np.mean(np.asarray(a) == np.asarray(c)) < 0.6  # independent masks agree half the time
