"""Task-specific adapters inside and on top of the shared encoder.

Projected Attention Layers (Stickland & Murray 2019), wired in parallel: with h a layer's
input, out = LN(FFN(A) + A + TS(h)), TS(h) = GELU(V^D(MHA(V^E(h)))). Per task, one V^E
(d -> d_s) and one V^D (d_s -> d) shared by all layers; per task and layer an attention in the
d_s space (own Q, K, V; no output matrix) with dropout on its attention probabilities at
BERT's attention dropout rate, as the reference code has. Init N(0, 0.02), biases 0.

Low-rank adapters (Bert-n-Pals' `BERTLowRank`, seed 004) are not PALs without the attention:
every layer has its own V^E and V^D, TS(h) = V^D(GELU(V^E h)), L x (2 d d_s + d + d_s)
parameters per task. The top-layer variant adds a task-specific full BERT layer on top of the
shared encoder.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtbert_jax.model.bert_config import BertConfig
from mtbert_jax.model.config import ModelConfig
from mtbert_jax.model.dropout import Dropout
from mtbert_jax.model.encoder import BertLayer, gelu

Array = jax.Array
_INIT = nn.initializers.normal(stddev=0.02)


class ProjectedAttention(nn.Module):
    """Multi-head self-attention in the d_s space: [batch, seq, d_s] -> [batch, seq, d_s]."""

    size: int
    heads: int
    dtype: jnp.dtype = jnp.float32
    dropout: float = 0.0  # on the attention probabilities (the reference code: BERT's 0.1)

    @nn.compact
    def __call__(self, x: Array, bias: Array, deterministic: bool = True,
                 example_ids: Optional[Array] = None) -> Array:
        batch, seq, _ = x.shape
        head_dim = self.size // self.heads

        def project(name):
            y = nn.Dense(self.size, dtype=self.dtype, kernel_init=_INIT, name=name)(x)
            return y.reshape(batch, seq, self.heads, head_dim)

        query = project("query") / jnp.sqrt(head_dim).astype(self.dtype)
        scores = jnp.einsum("bqhd,bkhd->bhqk", query, project("key"), preferred_element_type=jnp.float32) + bias
        probs = jax.nn.softmax(scores, axis=-1)
        probs = Dropout(self.dropout, attention=True)(probs, deterministic, example_ids).astype(self.dtype)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, project("value"), preferred_element_type=jnp.float32)
        return context.astype(self.dtype).reshape(batch, seq, self.size)


class LowRankAdapter(nn.Module):
    """One layer's low-rank adapter: [batch, seq, d] -> V^D(GELU(V^E h)), [batch, seq, d]."""

    hidden: int
    size: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h: Array) -> Array:
        x = gelu(nn.Dense(self.size, dtype=self.dtype, kernel_init=_INIT, name="down")(h))  # V^E
        return nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_INIT, name="up")(x)  # V^D


class TaskAdapter(nn.Module):
    """One task's adapters: `residual(i, h, bias)` inside layer i, `top(...)` above the encoder."""

    bert_config: BertConfig
    config: ModelConfig

    def setup(self):
        cfg, kind = self.config, self.config.adapter
        self.layer_indices = cfg.adapter_layer_indices(self.bert_config.num_hidden_layers)
        dtype = self.bert_config.dtype
        if kind == "pals":
            self.down = nn.Dense(cfg.adapter_size, dtype=dtype, kernel_init=_INIT)  # V^E, all layers
            self.up = nn.Dense(self.bert_config.hidden_size, dtype=dtype, kernel_init=_INIT)  # V^D
            self.attention = [ProjectedAttention(cfg.adapter_size, cfg.adapter_heads, dtype,
                                                 self.bert_config.attention_probs_dropout_prob)
                              for _ in self.layer_indices]
        if kind in ("low_rank", "low_rank_top_layer"):  # parameters low_rank_{layer}/{down,up}
            self.low_rank = {str(i): LowRankAdapter(self.bert_config.hidden_size, cfg.adapter_size, dtype)
                             for i in self.layer_indices}
        if kind in ("top_layer", "low_rank_top_layer"):
            self.top_layer = BertLayer(self.bert_config)

    @property
    def has_residual(self) -> bool:
        return self.config.adapter in ("pals", "low_rank", "low_rank_top_layer")

    @property
    def has_top_layer(self) -> bool:
        return self.config.adapter in ("top_layer", "low_rank_top_layer")

    def residual(self, layer: int, h: Array, bias: Array, deterministic: bool = True,
                 example_ids: Optional[Array] = None) -> Optional[Array]:
        """TS(h) for encoder layer `layer` ([batch, seq, hidden]), or None where it has none."""
        if not self.has_residual or layer not in self.layer_indices:
            return None
        if self.config.adapter != "pals":
            return self.low_rank[str(layer)](h)
        x = self.attention[self.layer_indices.index(layer)](self.down(h), bias, deterministic, example_ids)
        return gelu(self.up(x))

    def top(self, sequence: Array, bias: Array, deterministic: bool, example_ids: Optional[Array] = None) -> Array:
        if not self.has_top_layer:
            return sequence
        return self.top_layer(sequence, bias, deterministic, example_ids=example_ids)
