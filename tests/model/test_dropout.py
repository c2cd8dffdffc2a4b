"""Dropout: rate, scaling, determinism, independence of keys; per-example masks that do not
depend on where an example is computed."""

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


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_per_example_masks_keep_rate_and_scaling(rate):
    x = jnp.ones((200, 500))
    ids = jnp.arange(200)
    y = Dropout(rate).apply({}, x, False, ids, rngs={"dropout": jax.random.PRNGKey(0)})
    kept = np.asarray(y) != 0
    assert abs(kept.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / kept.size)
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / (1 - rate), rtol=1e-6)
    # Rows (examples) and positions are independent of each other: neighbours agree on
    # about p^2 + (1-p)^2 of their decisions, as independent draws do.
    expected = rate ** 2 + (1 - rate) ** 2
    assert abs(np.mean(kept[:-1] == kept[1:]) - expected) < 0.01
    assert abs(np.mean(kept[:, :-1] == kept[:, 1:]) - expected) < 0.01


def test_an_example_gets_its_mask_wherever_it_is_computed():
    """The mask of example e depends on (key, e), not on its row, batch or neighbours: what
    lets 1 device and 4, or 1 micro-batch and 2, train alike with dropout on."""
    x = jnp.ones((8, 3, 16))
    key = {"dropout": jax.random.PRNGKey(5)}
    whole = np.asarray(Dropout(0.5).apply({}, x, False, jnp.arange(8), rngs=key))
    halves = [np.asarray(Dropout(0.5).apply({}, x[:4], False, ids, rngs=key))
              for ids in (jnp.arange(4), jnp.arange(4, 8))]
    np.testing.assert_array_equal(np.concatenate(halves), whole)
    shuffled = np.asarray(Dropout(0.5).apply({}, x, False, jnp.array([7, 6, 5, 4, 3, 2, 1, 0]), rngs=key))
    np.testing.assert_array_equal(shuffled, whole[::-1])
    other_key = np.asarray(Dropout(0.5).apply({}, x, False, jnp.arange(8), rngs={"dropout": jax.random.PRNGKey(6)}))
    assert 0.4 < np.mean((whole != 0) == (other_key != 0)) < 0.6
