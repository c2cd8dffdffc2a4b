"""Task-specific adapters inside and on top of the shared encoder.

Projected Attention Layers (Stickland & Murray 2019), wired in parallel: with h a layer's
input, out = LN(FFN(A) + A + TS(h)), TS(h) = GELU(V^D(MHA(V^E(h)))). Per task, one V^E
(d -> d_s) and one V^D (d_s -> d) shared by all layers; per task and layer an attention in the
d_s space (own Q, K, V; no output matrix). Init N(0, 0.02), biases 0. The low-rank variant
uses the identity instead of the inner attention; the top-layer variant adds a task-specific
full BERT layer on top of the shared encoder.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtbert_jax.model.bert_config import BertConfig
from mtbert_jax.model.config import ModelConfig
from mtbert_jax.model.encoder import BertLayer, gelu

Array = jax.Array
_INIT = nn.initializers.normal(stddev=0.02)


class ProjectedAttention(nn.Module):
    """Multi-head self-attention in the d_s space: [batch, seq, d_s] -> [batch, seq, d_s]."""

    size: int
    heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, bias: Array) -> Array:
        batch, seq, _ = x.shape
        head_dim = self.size // self.heads

        def project(name):
            y = nn.Dense(self.size, dtype=self.dtype, kernel_init=_INIT, name=name)(x)
            return y.reshape(batch, seq, self.heads, head_dim)

        query = project("query") / jnp.sqrt(head_dim).astype(self.dtype)
        scores = jnp.einsum("bqhd,bkhd->bhqk", query, project("key"), preferred_element_type=jnp.float32) + bias
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, project("value"), preferred_element_type=jnp.float32)
        return context.astype(self.dtype).reshape(batch, seq, self.size)


class TaskAdapter(nn.Module):
    """One task's adapters: `residual(i, h, bias)` inside layer i, `top(...)` above the encoder."""

    bert_config: BertConfig
    config: ModelConfig

    def setup(self):
        cfg, kind = self.config, self.config.adapter
        self.layer_indices = cfg.adapter_layer_indices(self.bert_config.num_hidden_layers)
        if kind in ("pals", "low_rank", "low_rank_top_layer"):
            dtype = self.bert_config.dtype
            self.down = nn.Dense(cfg.adapter_size, dtype=dtype, kernel_init=_INIT)  # V^E
            self.up = nn.Dense(self.bert_config.hidden_size, dtype=dtype, kernel_init=_INIT)  # V^D
        if kind == "pals":
            self.attention = [ProjectedAttention(cfg.adapter_size, cfg.adapter_heads,
                                                 self.bert_config.dtype)
                              for _ in self.layer_indices]
        if kind in ("top_layer", "low_rank_top_layer"):
            self.top_layer = BertLayer(self.bert_config)

    @property
    def has_residual(self) -> bool:
        return self.config.adapter in ("pals", "low_rank", "low_rank_top_layer")

    @property
    def has_top_layer(self) -> bool:
        return self.config.adapter in ("top_layer", "low_rank_top_layer")

    def residual(self, layer: int, h: Array, bias: Array) -> Optional[Array]:
        """TS(h) for encoder layer `layer` ([batch, seq, hidden]), or None where it has none."""
        if not self.has_residual or layer not in self.layer_indices:
            return None
        x = self.down(h)
        if self.config.adapter == "pals":
            x = self.attention[self.layer_indices.index(layer)](x, bias)
        return gelu(self.up(x))

    def top(self, sequence: Array, bias: Array, deterministic: bool, example_ids: Optional[Array] = None) -> Array:
        if not self.has_top_layer:
            return sequence
        return self.top_layer(sequence, bias, deterministic, example_ids=example_ids)
