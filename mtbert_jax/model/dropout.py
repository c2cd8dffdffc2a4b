"""Dropout whose masks depend on the example, not on the device or micro-batch computing it.

Same behaviour as flax's nn.Dropout (keep with probability 1 - rate, scale kept values by
1 / (1 - rate), a "dropout" rng stream), with two differences:

- Given `example_ids` ([batch] ints: each row's index in the step's global batch), the mask of
  row r is a counter-based hash of (the layer's flax key, example id, position in the row):
  an example gets the same mask whether it sits on device 0 of one or device 3 of four, in one
  batch or in a micro-batch, so 1, 2 or 4 devices and 2 processes train alike, dropout on. The
  hash (murmur3's 32-bit finaliser, three rounds) is element-wise integer arithmetic that XLA
  fuses into the surrounding computation.
- Given `TokenIds` (each token's example id and position within its example, [batch, seq]),
  a token's mask depends on (key, its example, its position) only: packed rows (several
  examples in a row, data/packing.py) draw the masks the unpacked batch would. Attention
  probabilities ([batch, heads, query, key], `attention=True`) are keyed by the query's example
  and the (head, query position, key position) triple.
- Without example ids the bits come from XLA's RngBitGenerator (ThreeFry) keyed by the flax
  rng, not jax.random's threefry, which XLA:CPU lowers as a rolled loop (a MiniLM forward and
  backward 1.44 against 1.32 s; docs/performance.md).
"""

from __future__ import annotations

from typing import NamedTuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
# Attention-dropout positions are (head * STRIDE + query) * STRIDE + key: a stride independent of
# the row's length, so that a packed and a padded row give an example the same masks.
POSITION_STRIDE = 2048


class TokenIds(NamedTuple):
    """Dropout identities of a [batch, seq] block of tokens."""

    example: Array  # [batch, seq] the token's example id (its row's, unpacked)
    position: Array  # [batch, seq] its position within that example


def token_ids(example_ids: Array, seq_len: int) -> TokenIds:
    """The TokenIds of an unpacked batch: row r is example example_ids[r], positions 0..seq-1."""
    shape = (example_ids.shape[0], seq_len)
    return TokenIds(jnp.broadcast_to(example_ids[:, None], shape),
                    jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32)[None, :], shape))


def _threshold(rate: float) -> jnp.uint32:
    return jnp.uint32(min(int(round(rate * 2.0 ** 32)), 2 ** 32 - 1))


def _key_words(key: Array) -> Array:
    raw = key if jnp.issubdtype(key.dtype, jnp.unsignedinteger) else jax.random.key_data(key)
    return raw.reshape(-1)[:2].astype(jnp.uint32)


def keep_mask(key: Array, rate: float, shape: tuple[int, ...]) -> Array:
    """bool mask, True with probability 1 - rate (to 2^-32), from a jax PRNG key."""
    state = jnp.concatenate([_key_words(key), jnp.zeros(2, jnp.uint32)])
    _, bits = jax.lax.rng_bit_generator(state, shape, jnp.uint32,
                                        algorithm=jax.lax.RandomAlgorithm.RNG_THREE_FRY)
    return bits >= _threshold(rate)


def _fmix32(h: Array) -> Array:
    """murmur3's finaliser: every input bit affects every output bit."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def example_bits(key: Array, example_ids: Array, shape: tuple[int, ...]) -> Array:
    """[batch, ...] uint32 random bits; row r depends only on (key, example_ids[r], position)."""
    k0, k1 = _key_words(key)
    row_seed = _seed(example_ids, k0)
    position = jnp.zeros(shape[1:], jnp.uint32)
    stride = 1
    for axis in reversed(range(1, len(shape))):  # the element's index within its row
        position = position + jax.lax.broadcasted_iota(jnp.uint32, shape[1:], axis - 1) * jnp.uint32(stride)
        stride *= shape[axis]
    seeds = row_seed.reshape((-1,) + (1,) * (len(shape) - 1))
    return _fmix32(_fmix32(position[None] ^ seeds) + k1)


def _seed(example: Array, k0: Array) -> Array:
    return _fmix32(example.astype(jnp.uint32) * jnp.uint32(0x9E3779B9) + k0)


def token_bits(key: Array, ids: TokenIds, shape: tuple[int, ...], attention: bool = False) -> Array:
    """uint32 bits for a [batch, seq, features] tensor (or [batch, heads, seq, seq] attention
    probabilities) from each token's (example, position). For a [batch, seq, features] tensor of
    an unpacked batch these are exactly `example_bits`'s."""
    k0, k1 = _key_words(key)
    if attention:
        heads = jax.lax.broadcasted_iota(jnp.uint32, shape, 1)
        query = ids.position.astype(jnp.uint32)[:, None, :, None]
        keys = ids.position.astype(jnp.uint32)[:, None, None, :]
        position = (heads * jnp.uint32(POSITION_STRIDE) + query) * jnp.uint32(POSITION_STRIDE) + keys
        seeds = _seed(ids.example, k0)[:, None, :, None]
    else:
        features = shape[-1]
        position = (ids.position.astype(jnp.uint32)[..., None] * jnp.uint32(features)
                    + jax.lax.broadcasted_iota(jnp.uint32, shape, len(shape) - 1))
        seeds = _seed(ids.example, k0)[..., None]
    return _fmix32(_fmix32(position ^ seeds) + k1)


def example_keep_mask(key: Array, rate: float, shape: tuple[int, ...], example_ids: Array) -> Array:
    """bool mask, True with probability 1 - rate, the same for an example wherever it is computed."""
    return example_bits(key, example_ids, shape) >= _threshold(rate)


class Dropout(nn.Module):
    rate: float
    attention: bool = False  # x is [batch, heads, query, key] attention probabilities

    @nn.compact
    def __call__(self, x: Array, deterministic: bool, example_ids: Union[Array, TokenIds, None] = None) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        key = self.make_rng("dropout")
        if example_ids is None:
            keep = keep_mask(key, self.rate, x.shape)
        elif isinstance(example_ids, TokenIds):
            keep = token_bits(key, example_ids, x.shape, self.attention) >= _threshold(self.rate)
        else:
            keep = example_keep_mask(key, self.rate, x.shape, example_ids)
        return jnp.where(keep, x * jnp.asarray(1.0 / (1.0 - self.rate), x.dtype), jnp.zeros((), x.dtype))
