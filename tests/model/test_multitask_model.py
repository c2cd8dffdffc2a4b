"""The multi-task model: heads, pooling, adapters, parameter counts, freezing."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtbert_jax.model.bert_config import BertConfig
from mtbert_jax.model.config import ADAPTERS, PAIR_HEADS, POOLINGS, ModelConfig, ModelConfigError
from mtbert_jax.model.encoder import BertModel
from mtbert_jax.model.multitask import MultiTaskModel, init_model
from mtbert_jax.synthetic import tiny_bert_config
from mtbert_jax.tasks import TASKS as SPECS
from mtbert_jax.training.optimizer import Optimizer, OptimizerConfig
from mtbert_jax.training.param_groups import count_parameters, parameter_report

TINY = tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
TASKS = ("sst", "quora", "sts", "cfimdb")


def _batch(config: ModelConfig, task: str, rows=6, seq=10, pad=0, seed=0):
    """A synthetic batch with real lengths 3..seq, right-padded by `pad` more columns."""
    rng = np.random.default_rng(seed)
    segments = 2 if config.pair_encoding(task) == "bi" else 1
    batch = {}
    for suffix in ("", "_b")[:segments]:
        lengths = rng.integers(3, seq + 1, size=rows)
        ids = rng.integers(5, 60, size=(rows, seq)).astype(np.int32)
        mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
        types = np.zeros_like(ids)
        if segments == 1 and task in ("quora", "sts"):
            types[:, seq // 2:] = 1
        ids, types = ids * mask, types * mask
        batch |= {k + suffix: np.pad(v, ((0, 0), (0, pad))) for k, v in
                  (("input_ids", ids), ("token_type_ids", types), ("attention_mask", mask))}
    labels = {"sst": rng.integers(0, 5, rows), "cfimdb": rng.integers(0, 2, rows),
              "quora": rng.integers(0, 2, rows), "sts": rng.uniform(0, 5, rows)}[task]
    batch["labels"] = labels.astype(np.float32 if task == "sts" else np.int32)
    batch["weights"] = np.ones(rows, np.float32)
    return batch


def _configs():
    for pooling in POOLINGS:
        yield ModelConfig(tasks=TASKS, pooling=pooling)
    for head in PAIR_HEADS:
        yield ModelConfig(tasks=TASKS, pair_heads={"quora": head, "sts": head})
    for adapter in ADAPTERS:
        yield ModelConfig(tasks=TASKS, adapter=adapter, adapter_size=12, adapter_heads=3)
    yield ModelConfig(tasks=TASKS, shared_pair_hidden=True,
                      pair_heads={"quora": "bi_concat_diff_prod", "sts": "bi_concat_diff_prod"})


CONFIGS = list(_configs())
IDS = [f"{c.pooling}-{c.pair_head('sts')}-{c.adapter}-{c.shared_pair_hidden}" for c in CONFIGS]


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_shapes_and_padding_invariance(config):
    model, params = init_model(TINY, config, jax.random.PRNGKey(0))
    expected = {"sst": (6, 5), "cfimdb": (6, 2), "quora": (6,), "sts": (6,)}
    for task in TASKS:
        out = model.apply({"params": params}, task, _batch(config, task))
        padded = model.apply({"params": params}, task, _batch(config, task, pad=7))
        assert out.prediction.shape == expected[task]
        assert len(out.embeddings) == (2 if config.pair_encoding(task) == "bi" else 1)
        np.testing.assert_allclose(out.prediction, padded.prediction, atol=2e-5)
        if task == "sts" and config.pair_head("sts") == "cosine":
            assert ((out.prediction >= 0) & (out.prediction <= 5)).all()


def test_pair_head_needs_the_matching_encoding():
    bi = ModelConfig(pair_heads={"quora": "bi_concat", "sts": "cross"})
    model, params = init_model(TINY, bi, jax.random.PRNGKey(0))
    cross_batch = _batch(ModelConfig(), "quora")
    with pytest.raises(ValueError, match="pair_encoding='bi'"):
        model.apply({"params": params}, "quora", cross_batch)
    assert bi.pair_encoding("quora") == "bi" and bi.pair_encoding("sts") == "cross"
    assert bi.pair_encoding("sst") == "cross"


def test_pal_with_zero_decoder_leaves_the_encoder_unchanged():
    plain_config = ModelConfig(tasks=("sst",), pooling="mean")
    pal_config = ModelConfig(tasks=("sst",), pooling="mean", adapter="pals", adapter_size=12,
                             adapter_heads=3)
    plain, plain_params = init_model(TINY, plain_config, jax.random.PRNGKey(0))
    pals, pal_params = init_model(TINY, pal_config, jax.random.PRNGKey(1),
                                  bert_params=plain_params["bert"])
    batch = _batch(plain_config, "sst")
    args = (batch,)
    reference = plain.apply({"params": plain_params}, "sst", *args,
                            method=MultiTaskModel.sentence_vector)
    with_pal = pals.apply({"params": pal_params}, "sst", *args, method=MultiTaskModel.sentence_vector)
    assert not np.allclose(with_pal, reference)  # N(0, 0.02) init: PALs do act
    zeroed = jax.tree_util.tree_map(lambda x: x, pal_params)
    zeroed["adapters_sst"]["up"] = jax.tree_util.tree_map(jnp.zeros_like, zeroed["adapters_sst"]["up"])
    np.testing.assert_array_equal(
        pals.apply({"params": zeroed}, "sst", *args, method=MultiTaskModel.sentence_vector), reference)


@pytest.mark.parametrize("d_s, heads", [(204, 6), (256, 8)])
def test_pal_parameter_count_for_bert_base(d_s, heads):
    bert_base = BertConfig()
    config = ModelConfig(tasks=("sst", "quora", "sts"), adapter="pals", adapter_size=d_s,
                         adapter_heads=heads)
    shapes = jax.eval_shape(lambda: init_model(bert_base, config, jax.random.PRNGKey(0))[1])
    counts = count_parameters(shapes)
    d, layers = 768, 12
    per_task = 2 * d * d_s + layers * 3 * d_s ** 2
    biases = d_s + d + layers * 3 * d_s
    for task in config.tasks:
        assert counts[f"adapters_{task}"] == per_task + biases
    if d_s == 204:
        assert per_task == 1_811_520  # "about 1.8M per task"
    assert counts["bert"] == 109_482_240  # bert-base-uncased


def test_low_rank_adapters_are_per_layer_with_gelu_inside():
    """Bert-n-Pals' BERTLowRank: each layer its own V^E, V^D; TS(h) = V^D(GELU(V^E h)).
    L x (2 d d_s + d + d_s) parameters per task: 1,183,488 for MiniLM (6 x 384) at d_s 256."""
    minilm = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    config = ModelConfig(tasks=("sst", "sts"), adapter="low_rank", adapter_size=256)
    counts = count_parameters(jax.eval_shape(lambda: init_model(minilm, config, jax.random.PRNGKey(0))[1]))
    assert counts["adapters_sst"] == counts["adapters_sts"] == 6 * (2 * 384 * 256 + 384 + 256) == 1_183_488

    config = ModelConfig(tasks=("sst",), adapter="low_rank", adapter_size=8)
    model, params = init_model(TINY, config, jax.random.PRNGKey(0))
    adapters = params["adapters_sst"]
    assert sorted(adapters) == [f"low_rank_{i}" for i in range(TINY.num_hidden_layers)]
    h = np.random.default_rng(0).normal(size=(2, 5, TINY.hidden_size)).astype(np.float32)

    def by_hand(p):
        x = h @ np.asarray(p["down"]["kernel"]) + np.asarray(p["down"]["bias"])
        x = 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))
        return x @ np.asarray(p["up"]["kernel"]) + np.asarray(p["up"]["bias"])

    for layer in range(TINY.num_hidden_layers):
        got = model.apply({"params": params}, h, layer,
                          method=lambda m, h, i: m.adapters["sst"].residual(i, h, None))
        np.testing.assert_allclose(got, by_hand(adapters[f"low_rank_{layer}"]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(by_hand(adapters["low_rank_0"]), by_hand(adapters["low_rank_1"]))


def test_pal_layer_output_is_the_parallel_wiring():
    """out = LN(FFN(A) + A + TS(h)), A = LN(h + MHA(h)), TS(h) = GELU(V^D(MHA_s(V^E h))), with h
    the layer's input, computed here from the parameters (serial wiring, TS(A), would differ)."""
    from mtbert_jax.model.adapters import ProjectedAttention
    from mtbert_jax.model.encoder import BertAttention, attention_bias, gelu

    config = ModelConfig(tasks=("sst",), pooling="mean", adapter="pals", adapter_size=12, adapter_heads=3)
    model, params = init_model(TINY, config, jax.random.PRNGKey(0))
    # std 0.02 makes TS(h) too small to tell the wirings apart; scale the adapters up to std 1
    params["adapters_sst"] = jax.tree_util.tree_map(lambda x: 50 * x, params["adapters_sst"])
    batch = _batch(config, "sst")
    _, inter = model.apply({"params": params}, "sst", batch, capture_intermediates=True, mutable=["intermediates"])
    encoder = inter["intermediates"]["bert"]["encoder"]
    h = encoder["layer_0"]["__call__"][0]  # layer 1's input
    got = encoder["layer_1"]["__call__"][0]

    bias = attention_bias(batch["attention_mask"])
    layer, pal = params["bert"]["encoder"]["layer_1"], params["adapters_sst"]
    a = BertAttention(TINY).apply({"params": layer["attention"]}, h, bias, True)
    dense = lambda x, p: x @ p["kernel"] + p["bias"]  # noqa: E731
    ffn = dense(gelu(dense(a, layer["intermediate"]["dense"])), layer["output"]["dense"])
    inner = ProjectedAttention(12, 3).apply({"params": pal["attention_1"]}, dense(h, pal["down"]), bias)
    ts = gelu(dense(inner, pal["up"]))
    x = ffn + a + ts
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    ln = layer["output"]["LayerNorm"]
    expected = (x - mean) / jnp.sqrt(var + TINY.layer_norm_eps) * ln["scale"] + ln["bias"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_pal_attention_probabilities_get_dropout():
    """The reference PAL attention drops its probabilities at BERT's attention dropout rate."""
    from mtbert_jax.model.adapters import ProjectedAttention
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 12)), jnp.float32)
    bias, rngs = jnp.zeros((2, 1, 1, 5)), {"dropout": jax.random.PRNGKey(1)}
    params = ProjectedAttention(12, 3).init(jax.random.PRNGKey(0), x, bias)
    assert np.abs(ProjectedAttention(12, 3, dropout=1.0).apply(params, x, bias, True)).max() > 1e-3
    np.testing.assert_array_equal(ProjectedAttention(12, 3, dropout=1.0).apply(params, x, bias, False, rngs=rngs), 0.0)
    half = ProjectedAttention(12, 3, dropout=0.5).apply(params, x, bias, False, rngs=rngs)
    assert not np.allclose(half, ProjectedAttention(12, 3, dropout=0.5).apply(params, x, bias, True))

    dropping = tiny_bert_config(attention_probs_dropout_prob=0.1)
    config = ModelConfig(tasks=("sst",), adapter="pals", adapter_size=12, adapter_heads=3)
    model, params = init_model(dropping, config, jax.random.PRNGKey(0))
    rates = model.apply({"params": params}, method=lambda m: [a.dropout for a in m.adapters["sst"].attention])
    assert rates == [0.1] * dropping.num_hidden_layers


def test_adapter_layers_top_and_bottom_half():
    config = ModelConfig(tasks=("sst",), adapter="pals", adapter_size=12, adapter_heads=3,
                         adapter_layers="top")
    assert config.adapter_layer_indices(12) == tuple(range(6, 12))
    _, params = init_model(TINY, config, jax.random.PRNGKey(0))
    assert len([k for k in params["adapters_sst"] if k.startswith("attention")]) == 1


def _train(config, params, model, tx, steps=25):
    state = tx.init(params)
    batches = {t: _batch(config, t, rows=8, seed=3) for t in config.tasks}

    def loss_fn(p):
        return sum((SPECS[t].kind.loss(model.apply({"params": p}, t, b).prediction, b["labels"]) * b["weights"]).sum()
                   / b["weights"].sum() for t, b in batches.items())

    @jax.jit
    def step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    losses = []
    for _ in range(steps):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    return params, state, losses


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_every_head_and_adapter_learns(config):
    # Only the tasks the variant changes, to keep compile time down.
    if config.adapter != "none":
        tasks = ("sst", "quora")
    elif config.pair_head("sts") != "cross" or config.shared_pair_hidden:
        tasks = ("quora", "sts")
    else:
        tasks = ("sst",)
    config = dataclasses.replace(config, tasks=tasks)
    model, params = init_model(TINY, config, jax.random.PRNGKey(0))
    _, _, losses = _train(config, params, model, optax.adam(3e-3), steps=15)
    assert losses[-1] < 0.7 * losses[0], losses


def test_frozen_encoder_stays_bit_identical():
    config = ModelConfig(tasks=("sst", "sts"), adapter="low_rank", adapter_size=8)
    model, params = init_model(TINY, config, jax.random.PRNGKey(0))
    frozen = OptimizerConfig(freeze_encoder=True, task_lr=1e-2, warmup_fraction=0.0, max_grad_norm=0.0)
    tx = Optimizer(frozen, params, config.tasks, total_steps=1000, num_tasks_per_step=1).base
    trained, state, losses = _train(config, params, model, tx, steps=5)
    for a, b in zip(jax.tree_util.tree_leaves(params["bert"]), jax.tree_util.tree_leaves(trained["bert"])):
        np.testing.assert_array_equal(a, b)
    for part in ("heads_sst", "adapters_sts"):
        assert any(not np.array_equal(a, b) for a, b in zip(
            jax.tree_util.tree_leaves(params[part]), jax.tree_util.tree_leaves(trained[part])))
    # No optimizer state for the frozen encoder: Adam's moments cover only the rest.
    moments = sum(x.size for x in jax.tree_util.tree_leaves(state) if hasattr(x, "size") and x.ndim)
    trainable = sum(n for k, n in count_parameters(params).items() if k != "bert")
    assert moments == 2 * trainable
    assert losses[-1] < losses[0]


def test_real_checkpoint_inside_the_model(minilm_dir, tokenizer):
    from mtbert_jax.checkpoints.hf import load_hf_checkpoint
    bert_config, bert_params, _ = load_hf_checkpoint(minilm_dir)
    model, params = init_model(bert_config, ModelConfig(pooling="pooler"), jax.random.PRNGKey(0), bert_params)
    batch = tokenizer(["a fine film"], ["a good movie"], max_length=32)
    inputs = {"input_ids": batch.input_ids, "token_type_ids": batch.token_type_ids,
              "attention_mask": batch.attention_mask}
    vector = model.apply({"params": params}, "quora", inputs, method=MultiTaskModel.sentence_vector)
    pooled = BertModel(bert_config).apply({"params": bert_params}, batch.input_ids,
                                          batch.token_type_ids, batch.attention_mask).pooled_output
    np.testing.assert_allclose(vector, pooled, atol=1e-6)
    assert "beyond the encoder" in parameter_report(params)


@pytest.mark.parametrize("bad, words", [
    (dict(tasks=("sst", "mnli")), "tasks="),
    (dict(pooling="first"), "pooling='first'"),
    (dict(adapter="lora"), "adapter='lora'"),
    (dict(pair_heads={"sts": "dot"}), "pair_heads['sts']='dot'"),
    (dict(pair_heads={"sst": "cross"}), "not a sentence-pair task"),
    (dict(shared_pair_hidden=True, pair_heads={"quora": "cross", "sts": "cosine"}), "shared_pair_hidden"),
    (dict(adapter="pals", adapter_size=10, adapter_heads=3), "not divisible"),
    (dict(encoder_dropout=1.0), "encoder_dropout=1.0: expected a rate in [0, 1)"),
    (dict(head_dropout=-0.1), "head_dropout=-0.1: expected a rate in [0, 1)"),
])
def test_bad_model_config(bad, words):
    with pytest.raises(ModelConfigError, match=None) as err:
        ModelConfig(**bad)
    assert words in str(err.value)


def test_encoder_dropout_overrides_the_checkpoints_only_when_set():
    checkpoint = tiny_bert_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2)
    assert ModelConfig().encoder_config(checkpoint) == checkpoint
    off = ModelConfig(encoder_dropout=0.0).encoder_config(checkpoint)
    assert (off.hidden_dropout_prob, off.attention_probs_dropout_prob) == (0.0, 0.0)
    assert off.replace(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2) == checkpoint
    # With the encoder's dropout off (and the head's) training's forward pass is evaluation's;
    # with the checkpoint's rates it is not.
    batch, rngs = _batch(ModelConfig(tasks=("sst",)), "sst"), {"dropout": jax.random.PRNGKey(1)}
    for encoder_dropout, same in ((0.0, True), (None, False)):
        config = ModelConfig(tasks=("sst",), encoder_dropout=encoder_dropout, head_dropout=0.0)
        model, params = init_model(config.encoder_config(checkpoint), config, jax.random.PRNGKey(0))
        train = model.apply({"params": params}, "sst", batch, False, rngs=rngs)
        evaluate = model.apply({"params": params}, "sst", batch, True)
        equal = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(train), jax.tree.leaves(evaluate))]
        assert all(equal) if same else not any(equal)
