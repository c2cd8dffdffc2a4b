"""Pooling and the task heads."""

from __future__ import annotations

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtbert_jax.model.dropout import Dropout

Array = jax.Array
COSINE_SCALE = 20.0  # s = 20 cos(.,.): seed 002's "d features" head, MNRL's scale
STS_MAX = 5.0


def pool(kind: str, sequence: Array, mask: Array, pooler: Callable[[Array], Array]) -> Array:
    """[batch, seq, hidden], [batch, seq] mask -> [batch, hidden].

    pooler: BERT's tanh dense over [CLS]; cls: the raw [CLS] vector; mean / max: over the
    real (unmasked) tokens only.
    """
    if kind == "pooler":
        return pooler(sequence)
    if kind == "cls":
        return sequence[:, 0]
    real = mask[..., None] > 0
    x = sequence.astype(jnp.float32)
    if kind == "mean":
        return (jnp.where(real, x, 0.0).sum(1) / jnp.maximum(real.sum(1), 1)).astype(sequence.dtype)
    if kind == "max":  # a row without tokens (a filler row) pools to 0, not to -3.4e38
        top = jnp.where(real, x, jnp.finfo(jnp.float32).min).max(1)
        return jnp.where(real.any(1), top, 0.0).astype(sequence.dtype)
    raise ValueError(f"pooling {kind!r}: expected pooler, cls, mean or max")


def pool_packed(kind: str, sequence: Array, token_example: Array, example_start: Array,
                pooler: Callable[[Array], Array]) -> Array:
    """Pooling of packed rows (data/packing.py): [rows, seq, hidden] with each token's example
    slot ([rows, seq], -1: padding) and each example's first token ([examples], a flat index
    into rows x seq) -> [examples, hidden], each example pooled over its own tokens only."""
    flat = sequence.reshape((-1, sequence.shape[-1]))
    examples = example_start.shape[0]
    if kind in ("pooler", "cls"):
        first = flat[example_start]  # each example's [CLS]
        return pooler(first[:, None, :]) if kind == "pooler" else first
    x, slot = flat.astype(jnp.float32), token_example.reshape(-1)  # slot -1 (padding) is dropped
    if kind == "mean":
        count = jax.ops.segment_sum(jnp.ones_like(slot, jnp.float32), slot, examples)
        return (jax.ops.segment_sum(x, slot, examples) / jnp.maximum(count, 1.0)[:, None]).astype(sequence.dtype)
    if kind == "max":  # an empty (filler) slot pools to 0
        top = jax.ops.segment_max(x, slot, examples)
        count = jax.ops.segment_sum(jnp.ones_like(slot, jnp.float32), slot, examples)
        return jnp.where(count[:, None] > 0, top, 0.0).astype(sequence.dtype)
    raise ValueError(f"pooling {kind!r}: expected pooler, cls, mean or max")


def cosine(u: Array, v: Array, eps: float = 1e-8) -> Array:
    """[batch, d], [batch, d] -> [batch] cosine similarity, float32.

    |u| |v| is taken as the root of the squared norms' product, at least eps: at a zero vector
    (an empty filler slot, pooled to 0) its gradient is 0, where the norm's is 0/0 = NaN, which
    the slot's weight of 0 would not cancel."""
    u, v = u.astype(jnp.float32), v.astype(jnp.float32)
    squared = jnp.sum(u * u, -1) * jnp.sum(v * v, -1)
    return (u * v).sum(-1) / jnp.sqrt(jnp.maximum(squared, eps * eps))


def pair_features(mode: str, u: Array, v: Array) -> Array:
    """Bi-encoder features of the two sentence vectors (u, v: [batch, d])."""
    if mode == "bi_sum":
        return u + v
    if mode == "bi_concat":
        return jnp.concatenate([u, v], -1)
    if mode == "bi_concat_diff_prod":
        return jnp.concatenate([u, v, jnp.abs(u - v), u * v], -1)
    if mode == "bi_cosine_concat":
        return jnp.concatenate([u, v, cosine(u, v)[:, None].astype(u.dtype)], -1)
    raise ValueError(f"pair head {mode!r} has no feature vector")


class LinearHead(nn.Module):
    """dropout -> linear: [batch, features] -> [batch, outputs]."""

    outputs: int
    dropout: float

    @nn.compact
    def __call__(self, x: Array, deterministic: bool, example_ids: Optional[Array] = None) -> Array:
        x = Dropout(self.dropout)(x, deterministic, example_ids)
        return nn.Dense(self.outputs, kernel_init=nn.initializers.normal(0.02),
                        dtype=jnp.float32, name="dense")(x.astype(jnp.float32))


class CosineHead(nn.Module):
    """Seed 002's "d features": a linear map on each vector, then s = 20 cos(W u, W v)."""

    @nn.compact
    def __call__(self, u: Array, v: Array) -> Array:
        project = nn.Dense(u.shape[-1], kernel_init=nn.initializers.normal(0.02),
                           dtype=jnp.float32, name="dense")
        return COSINE_SCALE * cosine(project(u), project(v))
