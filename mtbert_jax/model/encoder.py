"""A functional Flax (linen) BERT encoder whose parameter names mirror the PyTorch checkpoints.

Parameter paths are the Hugging Face tensor names with "." replaced by "/" and list indices
written `layer_{i}`, so conversion (see `checkpoints/hf.py`) is a table, not a puzzle:
`encoder.layer.3.attention.self.query.weight` <-> `encoder/layer_3/attention/self/query/kernel`.

Post-LayerNorm layers (as in the original BERT). Matmuls run in `config.dtype`; parameters,
LayerNorm and softmax stay float32.

The same modules run every encoder family (model/families.py) as its config says: token-type
embeddings or none, the row of the first position, and MPNet's relative position bias
(`encoder/relative_attention_bias`, one [buckets, heads] table shared by all layers, added to
the scaled attention scores). Parameter names stay BERT's; checkpoints/hf.py renames them.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtbert_jax.model import mixed_precision
from mtbert_jax.model.bert_config import BertConfig
from mtbert_jax.model.dropout import Dropout
from mtbert_jax.model.families import relative_position_buckets

Array = jax.Array
# Called as residual_fn(layer_index, layer_input) -> [batch, seq, hidden] or None; its output is
# added inside the layer's last residual sum (the parallel wiring of Projected Attention Layers).
ResidualFn = Callable[[int, Array], Optional[Array]]

# Added to the attention scores of padding keys. Finite, so a row that is all padding gives a
# uniform distribution instead of NaN.
MASK_BIAS = -1e9


# BERT initialises every matrix and embedding with N(0, 0.02); biases 0, LayerNorm 1/0.
_INIT = nn.initializers.normal(stddev=0.02)


class TokenDense(nn.Dense):
    """nn.Dense on [..., features] computed as one [tokens, features] matrix product.

    Same parameters as nn.Dense. With a 3-D input XLA's backward pass contracts the kernel
    gradient over two axes and first copies the activations into a transposed layout; on one
    [tokens, features] matrix it does not (a FFN block's fwd+bwd: 103 ms -> 86 ms on 2 cores).
    In bfloat16 the product and its gradients are `mixed_precision.matmul` (bf16 operands,
    float32 accumulation, every product in XLA:CPU's fast form), and the output stays float32:
    the bias, GELU, dropout and residual sums that follow run in float32 as one fused pass each
    (in bf16 XLA:CPU splits such a chain into a pass per operation); callers cast to bf16 where
    the values feed the next product.
    """

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        x = inputs.reshape(-1, inputs.shape[-1])
        if self.dtype == jnp.bfloat16:
            kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            y = mixed_precision.matmul(x, kernel) + bias
        else:
            y = super().__call__(x)
        return y.reshape(inputs.shape[:-1] + y.shape[-1:])


def gelu(x: Array) -> Array:
    """BERT's exact GELU, x Phi(x), written with erf: jax.nn.gelu(approximate=False) uses erfc,
    which XLA:CPU evaluates with an extra exp and select (2.7x slower here); within 5e-7."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def attention_bias(attention_mask: Array) -> Array:
    """[batch, seq] 1/0 mask -> [batch, 1, 1, seq] float32 additive bias on attention scores."""
    return jnp.where(attention_mask[:, None, None, :] > 0, 0.0, MASK_BIAS).astype(jnp.float32)


def packed_attention_bias(token_example: Array) -> Array:
    """[rows, seq] example slot of each token (-1: padding) -> [rows, 1, seq, seq] bias that
    lets a token attend to the tokens of its own example only (a block-diagonal mask)."""
    same = token_example[:, None, :, None] == token_example[:, None, None, :]
    return jnp.where(same & (token_example[:, None, None, :] >= 0), 0.0, MASK_BIAS).astype(jnp.float32)


class EncoderOutputs(NamedTuple):
    sequence_output: Array  # [batch, seq, hidden]
    pooled_output: Array  # [batch, hidden]: tanh(dense(sequence_output[:, 0]))


class BertEmbeddings(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: Array, token_type_ids: Array, deterministic: bool,
                 example_ids: Optional[Array] = None, position_ids: Optional[Array] = None) -> Array:
        """[batch, seq] ids -> [batch, seq, hidden] after word + position (+ type), LayerNorm, dropout.
        `position_ids` ([batch, seq]; default 0..seq-1) restart per example in packed rows; the
        family's offset is added to them (MPNet's first position is row 2). Families without
        token types ignore `token_type_ids`."""
        cfg = self.config
        seq_len = input_ids.shape[-1]
        if position_ids is None and seq_len > cfg.max_positions:
            raise ValueError(f"input_ids has sequence length {seq_len}, more than the "
                             f"{cfg.max_positions} positions of max_position_embeddings={cfg.max_position_embeddings}")
        def embed(name, num, ids):
            return nn.Embed(num, cfg.hidden_size, embedding_init=_INIT, name=name)(ids)

        positions = jnp.arange(seq_len)[None, :] if position_ids is None else position_ids
        x = (embed("word_embeddings", cfg.vocab_size, input_ids)
             + embed("position_embeddings", cfg.max_position_embeddings, positions + cfg.position_offset))
        if cfg.family.token_types:
            x = x + embed("token_type_embeddings", cfg.type_vocab_size, token_type_ids)
        x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32, name="LayerNorm")(x)
        x = Dropout(cfg.hidden_dropout_prob)(x, deterministic, example_ids)
        return x.astype(cfg.dtype)


class RelativePositionBias(nn.Module):
    """MPNet's relative position bias: [1, heads, seq, seq] float32 from a [buckets, heads]
    table, by the columns' distance (families.relative_position_buckets). Computed once per
    forward pass and added to every layer's scaled scores."""

    config: BertConfig

    @nn.compact
    def __call__(self, seq_len: int) -> Array:
        cfg = self.config
        table = self.param("embedding", _INIT, (cfg.relative_attention_num_buckets, cfg.num_attention_heads))
        buckets = relative_position_buckets(seq_len, cfg.relative_attention_num_buckets)  # a constant
        return jnp.take(table, jnp.asarray(buckets), axis=0).transpose(2, 0, 1)[None].astype(jnp.float32)


class BertSelfAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, h: Array, bias: Array, deterministic: bool, example_ids: Optional[Array] = None,
                 position_bias: Optional[Array] = None) -> Array:
        """[batch, seq, hidden] -> [batch, seq, hidden] context, before the output projection.
        `position_bias` ([1, heads, seq, seq], MPNet's) is added to the scaled scores."""
        cfg = self.config
        batch, seq, _ = h.shape

        # Heads ahead of positions: [batch, heads, seq, head_dim]. In float32 XLA reads that
        # permuted layout in place; the bf16 products make the copies XLA:CPU needs themselves.
        def project(name):
            y = TokenDense(cfg.hidden_size, dtype=cfg.dtype, kernel_init=_INIT, name=name)(h).astype(cfg.dtype)
            return y.reshape(batch, seq, cfg.num_attention_heads, cfg.head_dim).transpose(0, 2, 1, 3)

        query, key, value = project("query"), project("key"), project("value")
        if cfg.dtype == jnp.bfloat16:  # float32 results, float32 gradients for float32 inputs
            scores_of, context_of = mixed_precision.matmul_nt, mixed_precision.matmul
        else:
            scores_of = functools.partial(jnp.einsum, "bhqd,bhkd->bhqk")
            context_of = functools.partial(jnp.einsum, "bhqk,bhkd->bhqd")
        # Scaled after the product, as BERT does, in float32 and fused into the softmax's pass.
        scores = scores_of(query, key) * (1.0 / math.sqrt(cfg.head_dim))
        if position_bias is not None:  # added apart from the mask's bias: no [batch, heads, seq, seq] copy
            scores = scores + position_bias
        scores = scores + bias
        probs = jax.nn.softmax(scores, axis=-1)
        probs = Dropout(cfg.attention_probs_dropout_prob, attention=True)(probs, deterministic, example_ids)
        context = context_of(probs.astype(cfg.dtype), value).astype(cfg.dtype)
        return context.transpose(0, 2, 1, 3).reshape(batch, seq, cfg.hidden_size)


class BertResidualOutput(nn.Module):
    """dense -> dropout -> LayerNorm(. + residual [+ extra]): HF's BertSelfOutput / BertOutput."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: Array, residual: Array, deterministic: bool,
                 extra: Optional[Array] = None, example_ids: Optional[Array] = None) -> Array:
        cfg = self.config
        y = TokenDense(cfg.hidden_size, dtype=cfg.dtype, kernel_init=_INIT, name="dense")(x)
        y = Dropout(cfg.hidden_dropout_prob)(y, deterministic, example_ids)
        y = y.astype(jnp.float32) + residual.astype(jnp.float32)
        if extra is not None:
            y = y + extra.astype(jnp.float32)
        y = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32, name="LayerNorm")(y)
        return y.astype(cfg.dtype)


class BertAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, h: Array, bias: Array, deterministic: bool, example_ids: Optional[Array] = None,
                 position_bias: Optional[Array] = None) -> Array:
        context = BertSelfAttention(self.config, name="self")(h, bias, deterministic, example_ids, position_bias)
        return BertResidualOutput(self.config, name="output")(context, h, deterministic, example_ids=example_ids)


class BertIntermediate(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        y = TokenDense(cfg.intermediate_size, dtype=cfg.dtype, kernel_init=_INIT, name="dense")(x)
        return gelu(y).astype(cfg.dtype)


class BertLayer(nn.Module):
    """One post-LayerNorm transformer layer.

    `extra_residual` (computed by the caller from the layer's input h) is added inside the
    final residual sum: out = LN(FFN(A) + A + extra), A = LN(h + MHA(h)). This is where
    Projected Attention Layers plug in, in parallel to the attention and feed-forward blocks.
    `position_bias`: the encoder's relative position bias (MPNet), None for BERT and for the
    task-specific top layers above the encoder.
    """

    config: BertConfig

    @nn.compact
    def __call__(self, h: Array, bias: Array, deterministic: bool,
                 extra_residual: Optional[Array] = None, example_ids: Optional[Array] = None,
                 position_bias: Optional[Array] = None) -> Array:
        a = BertAttention(self.config, name="attention")(h, bias, deterministic, example_ids, position_bias)
        ffn = BertIntermediate(self.config, name="intermediate")(a)
        return BertResidualOutput(self.config, name="output")(ffn, a, deterministic, extra_residual, example_ids)


class BertEncoder(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, h: Array, bias: Array, deterministic: bool,
                 residual_fn: Optional[ResidualFn] = None, example_ids: Optional[Array] = None) -> Array:
        cfg = self.config
        position_bias = None
        if cfg.relative_attention_num_buckets:
            position_bias = RelativePositionBias(cfg, name="relative_attention_bias")(h.shape[1])
        for i in range(cfg.num_hidden_layers):
            extra = residual_fn(i, h) if residual_fn is not None else None
            h = BertLayer(cfg, name=f"layer_{i}")(h, bias, deterministic, extra, example_ids, position_bias)
        return h


class BertPooler(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, sequence_output: Array) -> Array:
        """[batch, seq, hidden] -> [batch, hidden]: tanh(dense(first token))."""
        cfg = self.config
        cls = sequence_output[:, 0]
        return jnp.tanh(nn.Dense(cfg.hidden_size, dtype=cfg.dtype, kernel_init=_INIT,
                                 name="dense")(cls))


class BertModel(nn.Module):
    """BERT: embeddings, encoder, pooler. Call it, or its parts (`embed`, `encode`, `pool`).

    The parts exist for methods that act between them, such as SMART's perturbation of the
    embedding output. `example_ids` ([batch], each row's index in the step's global batch) make
    dropout masks depend on the example only (see dropout.py).
    """

    config: BertConfig

    def setup(self):
        self.embeddings = BertEmbeddings(self.config)
        self.encoder = BertEncoder(self.config)
        self.pooler = BertPooler(self.config)

    def embed(self, input_ids: Array, token_type_ids: Optional[Array] = None,
              deterministic: bool = True, example_ids: Optional[Array] = None,
              position_ids: Optional[Array] = None) -> Array:
        """[batch, seq] -> [batch, seq, hidden] embedding-layer output (after LayerNorm, dropout)."""
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        return self.embeddings(input_ids, token_type_ids, deterministic, example_ids, position_ids)

    def encode(self, embeddings: Array, attention_mask: Array, deterministic: bool = True,
               residual_fn: Optional[ResidualFn] = None, example_ids: Optional[Array] = None,
               bias: Optional[Array] = None) -> Array:
        """[batch, seq, hidden] embeddings, [batch, seq] mask -> [batch, seq, hidden]. `bias`
        (an attention bias such as a packed batch's) replaces the mask's."""
        bias = attention_bias(attention_mask) if bias is None else bias
        return self.encoder(embeddings, bias, deterministic, residual_fn, example_ids)

    def pool(self, sequence_output: Array) -> Array:
        return self.pooler(sequence_output)

    def __call__(self, input_ids: Array, token_type_ids: Optional[Array] = None,
                 attention_mask: Optional[Array] = None, deterministic: bool = True,
                 residual_fn: Optional[ResidualFn] = None, example_ids: Optional[Array] = None) -> EncoderOutputs:
        """[batch, seq] int ids (token types, 1/0 mask) -> sequence [b, s, h] and pooled [b, h]."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        x = self.embed(input_ids, token_type_ids, deterministic, example_ids)
        seq = self.encode(x, attention_mask, deterministic, residual_fn, example_ids)
        return EncoderOutputs(seq, self.pool(seq))


def init_params(config: BertConfig, rng: Array, seq_len: int = 8) -> dict:
    """Freshly initialised parameters (BERT's N(0, 0.02) init) for `BertModel(config)`."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return BertModel(config).init(rng, ids)["params"]
