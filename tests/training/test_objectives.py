"""SMART, R-Drop, MNRL, the cosine embedding loss and uncertainty weighting, by hand and in
training."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_training_config
from mtbert_jax.data.batching import TaskBatcher, bucket_lengths
from mtbert_jax.data.tokenized import Segments, TaskData
from mtbert_jax.errors import ConfigError
from mtbert_jax.model.config import ModelConfig
from mtbert_jax.model.multitask import init_model
from mtbert_jax.run.loop import train_and_evaluate
from mtbert_jax.synthetic import synthetic_batch, tiny_bert_config
from mtbert_jax.tasks import TASKS
from mtbert_jax.training.objectives import ObjectiveConfig, cosine_embedding_loss, make_objective, mnrl
from mtbert_jax.training.rdrop import RDropConfig, second_pass_key
from mtbert_jax.training.smart import SmartConfig, perturbation, update_teacher

TINY = tiny_bert_config()


def _sym_kl(p, q):
    p, q = np.asarray(p), np.asarray(q)
    return np.sum(p * np.log(p / q)) + np.sum(q * np.log(q / p))


def test_symmetric_kl_by_hand():
    logits_p, logits_q = jnp.array([[0.0, np.log(2.0)]]), jnp.array([[0.0, 0.0]])
    assert float(TASKS["sst"].kind.divergence(logits_p, logits_q)[0]) == pytest.approx(
        _sym_kl([1 / 3, 2 / 3], [0.5, 0.5]), rel=1e-5)
    # The binary paraphrase logit as a two-class distribution [1 - p, p].
    value = TASKS["quora"].kind.divergence(jnp.array([0.0]), jnp.array([np.log(3.0)]))
    assert float(value[0]) == pytest.approx(_sym_kl([0.5, 0.5], [0.25, 0.75]), rel=1e-5)
    assert float(TASKS["sts"].kind.divergence(jnp.array([2.0]), jnp.array([3.5]))[0]) == pytest.approx(2.25)


def _batch(rows=4, seq=8, seed=0):
    return synthetic_batch("sst", rows, seq, np.random.default_rng(seed), varied_lengths=False)


@pytest.fixture(scope="module")
def sst_model():
    return init_model(TINY, ModelConfig(tasks=("sst",)), jax.random.PRNGKey(0))


def test_smart_with_no_noise_and_no_step_adds_nothing(sst_model):
    model, params = sst_model
    batch, key = _batch(), jax.random.PRNGKey(1)
    plain = make_objective(model, "sst", ObjectiveConfig(), deterministic=True)
    zero = ObjectiveConfig(smart=SmartConfig(tasks=("sst",), sigma=0.0, eta=0.0, mu=0.0))
    smart = make_objective(model, "sst", zero, deterministic=True)
    assert float(smart(params, None, batch, key)[0]) == pytest.approx(float(plain(params, None, batch, key)[0]), abs=1e-6)
    on = ObjectiveConfig(smart=SmartConfig(tasks=("sst",), sigma=1e-2, eta=1e-1, eps=1e-1, mu=0.0))
    assert float(make_objective(model, "sst", on, deterministic=True)(params, None, batch, key)[0]) > \
        float(plain(params, None, batch, key)[0])


@pytest.mark.parametrize("task", ["sst", "quora", "sts"])
def test_rdrop_by_hand(task):
    """With dropout: the mean of the two passes' losses (the second under other masks) plus
    alpha/4 times their predictions' symmetric divergence; without dropout: the plain loss."""
    model, params = init_model(TINY, ModelConfig(tasks=(task,), pair_heads={"quora": "cross", "sts": "cross"}),
                               jax.random.PRNGKey(0))
    batch = synthetic_batch(task, 6, 8, np.random.default_rng(3), filler_rows=1)
    key = jax.random.PRNGKey(5)
    on = ObjectiveConfig(rdrop=RDropConfig(tasks=(task,), alpha=0.7))
    plain = make_objective(model, task, ObjectiveConfig())
    rdrop = make_objective(model, task, on)
    weights = np.asarray(batch["weights"])
    first, second = (plain.forward(params, batch, k).prediction for k in (key, second_pass_key(key)))
    assert np.abs(np.asarray(first) - np.asarray(second)).max() > 1e-3  # the masks differ
    divergence = float((np.asarray(TASKS[task].kind.divergence(first, second)) * weights).sum())
    expected = 0.5 * (float(plain(params, None, batch, key)[0]) + float(plain(params, None, batch, second_pass_key(key))[0])) \
        + 0.25 * 0.7 * divergence
    total, count = rdrop(params, None, batch, key)
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert float(count) == weights.sum()
    quiet = make_objective(model, task, on, deterministic=True)
    assert float(quiet(params, None, batch, key)[0]) == pytest.approx(
        float(make_objective(model, task, ObjectiveConfig(), deterministic=True)(params, None, batch, key)[0]), rel=1e-6)


@pytest.mark.parametrize("name", ["smart", "mnrl", "rdrop"])
def test_an_objective_on_a_task_not_trained_is_refused(sst_model, name):
    model, _ = sst_model
    config = ObjectiveConfig.from_dict({name: {"tasks": ("sts",)}})
    with pytest.raises(ConfigError, match=rf"objective.{name}.tasks: \['sts'\] not among the trained model.tasks \['sst'\]"):
        make_objective(model, "sst", config)


def test_perturbation_stays_in_the_eps_ball(sst_model):
    model, params = sst_model
    batch = _batch()
    config = SmartConfig(tasks=("sst",), sigma=1e-5, eta=1e-3, eps=1e-5)

    def forward(deltas):
        return model.apply({"params": params}, "sst", batch, perturbations=deltas).prediction

    clean = forward(None)
    deltas = perturbation("sst", forward, clean, [(4, 8, 32)], batch["weights"], jax.random.PRNGKey(0), config)
    assert deltas[0].shape == (4, 8, 32)
    assert float(jnp.max(jnp.abs(deltas[0]))) <= 1e-5 * (1 + 1e-6)
    assert float(jnp.max(jnp.abs(deltas[0]))) == pytest.approx(1e-5, rel=1e-3)  # the step reaches the ball


def test_perturbation_steps_up_the_divergence(sst_model):
    """One ascent step from the noise nu: the divergence at nu + step exceeds that at the point
    reflected the other way, nu - step (a descent step would reverse the two)."""
    model, params = sst_model
    batch = _batch()
    config = SmartConfig(tasks=("sst",), sigma=1e-2, eta=1e-2, eps=1.0)  # eps: no clipping here

    def forward(deltas):
        return model.apply({"params": params}, "sst", batch, perturbations=deltas).prediction

    clean, key = forward(None), jax.random.PRNGKey(0)
    (delta,) = perturbation("sst", forward, clean, [(4, 8, 32)], batch["weights"], key, config)
    noise = config.sigma * jax.random.normal(jax.random.split(key, 1)[0], (4, 8, 32))  # perturbation's own draw
    step = delta - noise
    np.testing.assert_allclose(jnp.max(jnp.abs(step), axis=(1, 2)), config.eta, rtol=1e-4)  # eta g / ||g||_inf

    def divergence(d):
        return float((TASKS["sst"].kind.divergence(forward([d]), clean) * batch["weights"]).sum())

    assert divergence(noise + step) > divergence(noise - step) > 0


def test_unique_text_batches_hold_no_text_twice_on_either_side_or_across():
    """MNRL's negatives: no text twice among the first sentences, among the second ones, nor
    one record's first sentence equal to another record's second sentence in the batch."""
    rng = np.random.default_rng(0)
    pool = [np.array([101, 5 + k, 102], np.int32) for k in range(12)]  # 12 texts shared by both sides
    firsts = [pool[i] for i in rng.integers(0, 12, 60)]
    seconds = [pool[i] for i in rng.integers(0, 12, 60)]
    segments = tuple(Segments.from_lists(side, [np.zeros(3, np.int32)] * 60) for side in (firsts, seconds))
    data = TaskData("quora", "train", np.arange(60).astype(str), np.ones(60, np.int32), segments, 0, [])
    batcher = TaskBatcher(data, 4, bucket_lengths(16), unique_texts=True)
    seen = []
    for indices in batcher.pass_order(np.random.default_rng(0)):
        a = [tuple(firsts[i]) for i in indices]
        b = [tuple(seconds[i]) for i in indices]
        assert len(set(a)) == len(a) and len(set(b)) == len(b), (a, b)
        # across the sides, a text may meet only itself: a record whose two sentences are equal
        assert all(a[i] != b[j] for i in range(len(a)) for j in range(len(b)) if i != j), (a, b)
        seen += list(indices)
    assert sorted(seen) == list(range(60))


def test_teacher_update_rule():
    teacher, params = {"w": jnp.array([1.0])}, {"w": jnp.array([0.0])}
    early = update_teacher(teacher, params, jnp.asarray(5), total_steps=100)  # < 10%: beta 0.99
    late = update_teacher(teacher, params, jnp.asarray(10), total_steps=100)  # from 10%: 0.999
    assert float(early["w"][0]) == pytest.approx(0.99) and float(late["w"][0]) == pytest.approx(0.999)


def test_bregman_term_is_zero_when_the_teacher_is_the_model(sst_model):
    model, params = sst_model
    config = ObjectiveConfig(smart=SmartConfig(tasks=("sst",), sigma=0.0, eta=0.0, mu=1.0))
    objective = make_objective(model, "sst", config, deterministic=True)
    batch, key = _batch(), jax.random.PRNGKey(0)
    same = float(objective(params, params, batch, key)[0])
    moved = jax.tree_util.tree_map(lambda x: x + 0.05, params)
    assert same == pytest.approx(float(make_objective(model, "sst", ObjectiveConfig(), True)(params, None, batch, key)[0]), abs=1e-6)
    assert float(objective(params, moved, batch, key)[0]) > same


def test_mnrl_by_hand_on_three_pairs():
    u = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    v = jnp.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    ids_b = jnp.array([[1, 2], [3, 4], [5, 6]])
    losses = mnrl(u, v, jnp.ones(3), ids_b)
    un = np.asarray(u) / np.linalg.norm(u, axis=1, keepdims=True)
    vn = np.asarray(v) / np.linalg.norm(v, axis=1, keepdims=True)
    scores = 20 * un @ vn.T
    expected = -np.log(np.exp(np.diag(scores)) / np.exp(scores).sum(1))
    np.testing.assert_allclose(losses, expected, rtol=1e-5, atol=1e-6)
    # A negative row does not take part; a repeated second text is not a negative for its twin.
    only_two = mnrl(u, v, jnp.array([1.0, 1.0, 0.0]), ids_b)
    assert float(only_two[2]) == 0.0
    np.testing.assert_allclose(only_two[:2], -np.log(np.exp(np.diag(scores)[:2]) / np.exp(scores[:2, :2]).sum(1)), rtol=1e-5, atol=1e-6)
    twins = mnrl(u, v, jnp.ones(3), jnp.array([[1, 2], [1, 2], [5, 6]]))
    assert float(twins[0]) == pytest.approx(-np.log(np.exp(scores[0, 0]) / (np.exp(scores[0, 0]) + np.exp(scores[0, 2]))), rel=1e-4, abs=1e-6)


def test_unique_text_batches_never_repeat_a_text():
    texts = [np.array([101, 5 + (i % 7), 102], np.int32) for i in range(40)]  # many repeats
    others = [np.array([101, 50 + i, 102], np.int32) for i in range(40)]
    segments = (Segments.from_lists(texts, [np.zeros(3, np.int32)] * 40),
                Segments.from_lists(others, [np.zeros(3, np.int32)] * 40))
    data = TaskData("quora", "train", np.arange(40).astype(str), np.ones(40, np.int32), segments, 0, [])
    batcher = TaskBatcher(data, 8, bucket_lengths(16), unique_texts=True)
    seen = []
    for indices in batcher.pass_order(np.random.default_rng(0)):
        firsts = [tuple(texts[i]) for i in indices]
        assert len(firsts) == len(set(firsts)) and len(indices) <= 8
        seen += list(indices)
    assert sorted(seen) == list(range(40))


def test_mnrl_term_is_a_mean_over_positive_pairs():
    """loss / rows = task loss mean + weight x MNRL mean over the positive pairs only."""
    from mtbert_jax.training.objectives import MnrlConfig, positives
    config = ModelConfig(tasks=("quora",), pair_heads={"quora": "bi_concat"})
    model, params = init_model(TINY, config, jax.random.PRNGKey(0))
    batch = synthetic_batch("quora", 8, 8, np.random.default_rng(1), pair_encoding="bi", filler_rows=2)
    batch["labels"] = np.array([1, 0, 1, 0, 0, 1, 0, 0], np.int32)
    key = jax.random.PRNGKey(0)
    total, count = make_objective(model, "quora", ObjectiveConfig(mnrl=MnrlConfig(tasks=("quora",), weight=0.5)),
                                  True)(params, None, batch, key)
    out = model.apply({"params": params}, "quora", batch)
    w = np.asarray(batch["weights"])
    rows = np.asarray(positives("quora", batch["labels"], 4.0)) * w
    assert 0 < rows.sum() < w.sum()
    ranking = np.asarray(mnrl(*out.embeddings, jnp.asarray(rows), batch["input_ids_b"]))
    task = np.asarray(TASKS["quora"].kind.loss(out.prediction, batch["labels"]))
    expected = (task * w).sum() / w.sum() + 0.5 * ranking.sum() / rows.sum()
    assert float(count) == w.sum()
    assert float(total) / float(count) == pytest.approx(expected, rel=1e-5)


def test_cosine_embedding_loss_by_hand():
    u, v = jnp.array([[1.0, 0.0], [1.0, 0.0]]), jnp.array([[1.0, 1.0], [1.0, 1.0]])
    c = 1 / np.sqrt(2)
    np.testing.assert_allclose(cosine_embedding_loss(u, v, jnp.array([4.0, 1.0])), [1 - c, c], rtol=1e-6)


def test_cosine_embedding_loss_trains_what_scores_sts():
    """Under the cosine embedding loss STS is scored 2.5 (1 + cos(u, v)) from the very vectors the
    loss trains, and that score moves as the encoder trains (a head with parameters would not:
    its gradient under this loss is zero)."""
    config = ModelConfig(tasks=("sts",), pair_heads={"sts": "bi_cosine"})
    model, params = init_model(TINY, config, jax.random.PRNGKey(0))
    assert "heads_sts" not in params
    batch = synthetic_batch("sts", 6, 8, np.random.default_rng(0), pair_encoding="bi")
    objective = make_objective(model, "sts", ObjectiveConfig(sts_loss="cosine_embedding"), deterministic=True)

    def score(p):
        out = model.apply({"params": p}, "sts", batch)
        u, v = np.asarray(out.embeddings[0], np.float64), np.asarray(out.embeddings[1], np.float64)
        cos = (u * v).sum(-1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)
        np.testing.assert_allclose(np.asarray(out.prediction), 2.5 * (1 + cos), rtol=1e-5, atol=1e-5)
        return np.asarray(out.prediction)

    before = score(params)
    grads = jax.grad(lambda p: objective(p, None, batch, jax.random.PRNGKey(0))[0])(params)
    params = jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params, grads)
    assert np.abs(score(params) - before).max() > 1e-3


@pytest.mark.parametrize("head", ["bi_concat", "cosine", "bi_cosine_concat"])
def test_cosine_embedding_loss_refuses_a_head_it_cannot_train(head):
    from mtbert_jax.errors import ConfigError
    from mtbert_jax.training.objectives import check_objective
    with pytest.raises(ConfigError, match="pair_heads.sts='bi_cosine'"):
        check_objective(ObjectiveConfig(sts_loss="cosine_embedding"),
                        ModelConfig(tasks=("sts",), pair_heads={"sts": head}))


def test_uncertainty_weighting():
    model, params = init_model(TINY, ModelConfig(tasks=("sst",)), jax.random.PRNGKey(0))
    params = {**params, "uncertainty_sst": jnp.asarray(0.5)}
    batch, key = _batch(), jax.random.PRNGKey(0)
    plain, count = make_objective(model, "sst", ObjectiveConfig(), True)(params, None, batch, key)
    weighted, _ = make_objective(model, "sst", ObjectiveConfig(uncertainty_weighting=True), True)(params, None, batch, key)
    assert float(weighted) == pytest.approx(np.exp(-0.5) * float(plain) + 0.5 * float(count), rel=1e-5)


def test_smart_mnrl_and_pcgrad_train_together(tiny_checkpoint, tiny_data_dir, tmp_path):
    config = tiny_training_config(
        tiny_checkpoint, tiny_data_dir, tmp_path / "cache", schedule__kind="all_tasks_until_largest",
        optimizer__combiner="pcgrad", num_epochs=8, objective__smart__tasks=("sst", "quora", "sts"),
        objective__mnrl__tasks=("quora",), model__pair_heads={"quora": "bi_concat_diff_prod", "sts": "cross"},
        objective__uncertainty_weighting=True)
    train_and_evaluate(config, tmp_path / "run")
    train = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if "loss" in r]
    for task in ("sst", "quora", "sts"):
        first = np.mean([r["loss"][task] for r in train[:6]])
        last = np.mean([r["loss"][task] for r in train[-6:]])
        assert last < first, (task, first, last)
    assert all("pcgrad_conflicts" in r for r in train)
    import orbax.checkpoint as ocp
    manager = ocp.CheckpointManager((tmp_path / "run" / "checkpoints").resolve())
    state = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
    assert state["train"]["teacher"] is not None and "uncertainty_sst" in state["train"]["params"]
