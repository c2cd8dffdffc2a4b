"""FLOP counts and MFU: hand-computed counts, XLA's own count of the encoder as the reference,
the tokens of padded and packed batches, and the datasheet peaks by jax device kind."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtbert_jax.batch import ATTENTION_MASK, EXAMPLE_START, INPUT_IDS, POSITION_IDS, TOKEN_EXAMPLE, TOKEN_TYPE_IDS
from mtbert_jax.synthetic import tiny_bert_config
from mtbert_jax.training import flops

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2)


def test_encoder_flops_by_hand():
    # Per layer, 4 x 16 = 64 tokens: Q, K, V, output 4 x 32 x 32 and the feed-forward pair
    # 2 x 32 x 64 multiply-adds per token: 2 x 64 x (4096 + 4096) = 1,048,576; the scores and the
    # weighted values, 2 x 4 rows x 16 x 16 x 32 multiply-adds: 2 x 2 x 32,768 = 131,072.
    # Two layers, then the pooler on 4 rows: 2 x 4 x 32 x 32 = 8,192.
    assert flops.encoder_matmul_flops(TINY, 4, 16) == 2 * (1_048_576 + 131_072) + 8_192
    assert flops.encoder_matmul_flops(TINY, 4, 16, pooled=10) == 2 * (1_048_576 + 131_072) + 20_480
    assert flops.train_step_flops(TINY, 4, 16) == 3 * (2 * (1_048_576 + 131_072) + 8_192)
    # A BertConfig serves as well as a dict of its fields.
    assert flops.encoder_matmul_flops(tiny_bert_config(), 4, 16) == flops.encoder_matmul_flops(TINY, 4, 16)


def _xla_flops(fn, *args) -> float:
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]


def test_counts_match_xla_own_count_of_the_encoder():
    """XLA counts every operation of the compiled program; the matmuls are all but 1% of it at
    hidden 256, seq 128, forward and forward + backward alike."""
    from mtbert_jax.model.encoder import BertModel, init_params

    config = tiny_bert_config(hidden_size=256, intermediate_size=1024, num_attention_heads=4,
                              max_position_embeddings=128, vocab_size=100)
    params = init_params(config, jax.random.PRNGKey(0))
    ids = jnp.ones((2, 128), jnp.int32)
    model = BertModel(config)

    def forward(p, ids):
        return model.apply({"params": p}, ids).pooled_output

    def loss(p, ids):
        return (forward(p, ids) ** 2).sum()

    assert 0.98 < flops.encoder_matmul_flops(config, 2, 128) / _xla_flops(forward, params, ids) <= 1.0
    assert 0.98 < flops.train_step_flops(config, 2, 128) / _xla_flops(jax.value_and_grad(loss), params, ids) <= 1.0


def _padded(seq, lengths, side=""):
    """[rows, seq] right-padded rows of the given real lengths."""
    mask = (np.arange(seq)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return {INPUT_IDS + side: mask * 7, TOKEN_TYPE_IDS + side: 0 * mask, ATTENTION_MASK + side: mask}


def _packed(rows, length, token_example, slots, side=""):
    """[rows, length] packed rows; token_example: each token's example slot, -1 for padding."""
    token_example = np.asarray(token_example, np.int32).reshape(rows, length)
    zeros = np.zeros((rows, length), np.int32)
    return {INPUT_IDS + side: zeros + 1, TOKEN_TYPE_IDS + side: zeros, POSITION_IDS + side: zeros,
            TOKEN_EXAMPLE + side: token_example, EXAMPLE_START + side: np.zeros(slots, np.int32)}


def test_batch_flops_and_tokens_follow_the_arrays_the_device_runs():
    padded = _padded(16, [16, 3, 9, 0])  # the last row a filler
    assert flops.batch_matmul_flops(TINY, padded) == flops.encoder_matmul_flops(TINY, 4, 16)
    assert flops.batch_tokens(padded) == (28, 64)

    # Two rows of 8 holding 3 examples (2 + 5 tokens, 6 tokens), 2 padding tokens; 4 slots.
    packed = _packed(2, 8, [0, 0, 1, 1, 1, 1, 1, -1, 2, 2, 2, 2, 2, 2, -1, -1], slots=4)
    assert flops.batch_matmul_flops(TINY, packed) == flops.encoder_matmul_flops(TINY, 2, 8, pooled=4)
    assert flops.batch_tokens(packed) == (13, 16)

    # A bi-encoded pair: both sides count.
    pair = {**_padded(16, [16, 3, 9, 1]), **_padded(8, [8, 8, 2, 1], side="_b")}
    assert flops.batch_matmul_flops(TINY, pair) == (flops.encoder_matmul_flops(TINY, 4, 16)
                                                    + flops.encoder_matmul_flops(TINY, 4, 8))
    assert flops.batch_tokens(pair) == (29 + 19, 64 + 32)

    step = {"sst": padded, "quora": packed, "sts": pair}
    forward = sum(flops.batch_matmul_flops(TINY, b) for b in step.values())
    assert flops.step_flops(TINY, step) == 3 * forward
    assert flops.step_flops(TINY, step, passes=1) == forward  # a frozen encoder: its forward only


@pytest.mark.parametrize("kind, dtype, peak", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4e12), ("NVIDIA H100 80GB HBM3", "float32", 494.7e12),
    ("NVIDIA H100 PCIe", "bfloat16", 756e12), ("NVIDIA H100 NVL", "bfloat16", 835.5e12),
    ("NVIDIA H200", "bfloat16", 989.4e12), ("NVIDIA H200 NVL", "bfloat16", 835.5e12),
    ("NVIDIA GH200 480GB", "bfloat16", 989.4e12),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 312e12), ("NVIDIA A100 80GB PCIe", "float32", 156e12),
    ("TPU v4", "bfloat16", 275e12), ("TPU v5 lite", "bfloat16", 197e12), ("TPU v5e", "bfloat16", 197e12),
    ("TPU v5", "bfloat16", 459e12), ("TPU v5p", "bfloat16", 459e12), ("TPU v6 lite", "bfloat16", 918e12),
    ("TPU v5 lite", "float32", 197e12),  # jax multiplies float32 in one bfloat16 pass on TPUs
    ("TPU v4 lite", "bfloat16", None), ("cpu", "bfloat16", None), ("cpu", "float32", None),
    ("NVIDIA GeForce RTX 4090", "bfloat16", None), ("NVIDIA H100 80GB HBM3", "float16", None),
])
def test_datasheet_peaks_by_device_kind(kind, dtype, peak):
    assert flops.datasheet_peak_flops(kind, dtype) == peak


def test_mfu_is_a_fraction_of_all_devices_peak_and_none_where_unknown():
    assert flops.mfu(0.25 * 8 * 989.4e12, "NVIDIA H100 80GB HBM3", "bfloat16", 8) == pytest.approx(0.25)
    assert flops.mfu(50e12, "TPU v5 lite", "bfloat16", 1) == pytest.approx(50 / 197)
    assert flops.mfu(1e12, "cpu", "float32", 1) is None
    assert flops.mfu(1e12, "NVIDIA GeForce RTX 4090", "bfloat16", 1) is None
    assert flops.mfu(1e12, "NVIDIA H100 80GB HBM3", "bfloat16", 0) is None
    assert flops.device_peak_flops("bfloat16") is None  # the tests' CPU
