"""Distillation: the soft losses by hand, the objective's mix, and students trained from teacher
runs whose outputs are computed once and kept, teachers of another max_length, pair encoding or
architecture and tokenizer (MPNet) scoring their own reading of the training records."""

from __future__ import annotations

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_training_config
from mtbert_jax.batch import GOLD, LABELS, TARGETS
from mtbert_jax.data.augment import altered_copies
from mtbert_jax.data.task_files import read_task_file
from mtbert_jax.data.tokenized import Segments, TaskData
from mtbert_jax.errors import ConfigError, DataError
from mtbert_jax.model.config import ModelConfig
from mtbert_jax.model.multitask import init_model
from mtbert_jax.run.distillation import ALTERED_TARGETS_FILE, TARGETS_FILE, aligned_positions
from mtbert_jax.run.evaluate import load_trained, predict_file
from mtbert_jax.run.loop import train_and_evaluate
from mtbert_jax.synthetic import synthetic_batch, tiny_bert_config
from mtbert_jax.tasks import TASKS
from mtbert_jax.training.objectives import (
    DistillationConfig,
    MnrlConfig,
    ObjectiveConfig,
    check_objective,
    make_objective,
)


def test_soft_losses_by_hand():
    sst, quora, sts = (TASKS[t].kind for t in ("sst", "quora", "sts"))
    z = jnp.array([[0.3, -1.0, 2.0]])
    teacher = jax.nn.softmax(z)
    for t in (1.0, 2.0, 4.0):  # a student equal to its teacher loses nothing, at any temperature
        assert float(sst.soft_loss(z, teacher, t)[0]) == pytest.approx(0.0, abs=1e-6)
    # T^2 KL(p_T || q_T), with p_T = softmax(log p / T) and q_T = softmax(z / T).
    p, student, t = np.array([0.7, 0.2, 0.1]), np.array([0.0, 1.0, 0.5]), 2.0
    p_t = p ** (1 / t) / np.sum(p ** (1 / t))
    q_t = np.exp(student / t) / np.sum(np.exp(student / t))
    expected = t ** 2 * np.sum(p_t * np.log(p_t / q_t))
    assert float(sst.soft_loss(jnp.array([student]), jnp.array([p]), t)[0]) == pytest.approx(expected, rel=1e-5)
    # Its gradient is T (q_T - p_T): the scale Hinton's T^2 keeps.
    grad = jax.grad(lambda s: sst.soft_loss(s[None], jnp.array([p]), t)[0])(jnp.array(student))
    assert np.allclose(grad, t * (q_t - p_t), atol=1e-5)
    # Quora: KL between Bernoullis; STS: the squared difference of scores.
    q = 1 / (1 + np.exp(-0.4))
    bernoulli = 0.8 * np.log(0.8 / q) + 0.2 * np.log(0.2 / (1 - q))
    assert float(quora.soft_loss(jnp.array([0.4]), jnp.array([0.8]))[0]) == pytest.approx(bernoulli, rel=1e-5)
    assert float(quora.soft_loss(jnp.array([0.4]), jnp.array([q]))[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(sts.soft_loss(jnp.array([2.0]), jnp.array([3.5]))[0]) == pytest.approx(2.25)


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_the_objective_mixes_gold_and_teacher_losses(weight):
    model, params = init_model(tiny_bert_config(), ModelConfig(tasks=("sst",)), jax.random.PRNGKey(0))
    batch = synthetic_batch("sst", 4, 8, np.random.default_rng(0), varied_lengths=False)
    targets = np.random.default_rng(1).dirichlet(np.ones(5), 4).astype(np.float32)
    key = jax.random.PRNGKey(1)
    config = ObjectiveConfig(distillation=DistillationConfig(teachers=("runs/x",), weight=weight, temperature=3.0))
    mixed, rows = make_objective(model, "sst", config, deterministic=True)(params, None, batch | {TARGETS: targets}, key)
    logits = model.apply({"params": params}, "sst", batch).prediction
    kind = TASKS["sst"].kind
    expected = np.sum(((1 - weight) * kind.loss(logits, batch[LABELS]) + weight * kind.soft_loss(logits, targets, 3.0))
                      * batch["weights"])
    assert float(mixed) == pytest.approx(float(expected), rel=1e-5) and float(rows) == 4
    plain = make_objective(model, "sst", ObjectiveConfig(), deterministic=True)(params, None, batch, key)[0]
    assert (float(mixed) == pytest.approx(float(plain), rel=1e-6)) == (weight == 0.0)


def test_an_altered_copy_learns_its_targets_alone():
    """Per example (1 - a) gold + a soft, with a = the weight where the label is gold and 1 where
    the example is an altered copy, whose placeholder label must not count."""
    model, params = init_model(tiny_bert_config(), ModelConfig(tasks=("sst",)), jax.random.PRNGKey(0))
    batch = synthetic_batch("sst", 4, 8, np.random.default_rng(0), varied_lengths=False)
    targets = np.random.default_rng(1).dirichlet(np.ones(5), 4).astype(np.float32)
    gold = np.array([1, 0, 1, 0], np.float32)
    config = ObjectiveConfig(distillation=DistillationConfig(teachers=("runs/x",), weight=0.3, temperature=2.0))
    objective = make_objective(model, "sst", config, deterministic=True)
    loss = objective(params, None, batch | {TARGETS: targets, GOLD: gold}, jax.random.PRNGKey(1))[0]
    logits = model.apply({"params": params}, "sst", batch).prediction
    kind = TASKS["sst"].kind
    a = np.where(gold > 0, 0.3, 1.0)
    expected = np.sum((1 - a) * kind.loss(logits, batch[LABELS]) + a * kind.soft_loss(logits, targets, 2.0))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    # Without the teachers' targets such a batch is refused: its placeholder labels would train as gold.
    with pytest.raises(ValueError, match="altered copies"):
        objective(params, None, batch | {GOLD: gold}, jax.random.PRNGKey(1))
    # Another placeholder label changes nothing.
    relabelled = batch | {LABELS: np.where(gold > 0, batch[LABELS], 4 - batch[LABELS])}
    assert float(objective(params, None, relabelled | {TARGETS: targets, GOLD: gold}, jax.random.PRNGKey(1))[0]) \
        == pytest.approx(float(loss), rel=1e-6)


@pytest.mark.parametrize("field, value, message", [("weight", 1.5, r"in \[0, 1\]"), ("temperature", 0.0, "> 0"),
                                                   ("altered_copies", -1, "whole number"),
                                                   ("altered_copies", 1.5, "whole number")])
def test_bad_settings_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        DistillationConfig(**{field: value})


@pytest.mark.parametrize("objective, message", [
    (ObjectiveConfig(distillation=DistillationConfig(altered_copies=1)), "need objective.distillation.teachers"),
    (ObjectiveConfig(distillation=DistillationConfig(teachers=("t",), weight=0.0, altered_copies=1)), "a weight > 0"),
    (ObjectiveConfig(sts_loss="cosine_embedding", distillation=DistillationConfig(teachers=("t",), altered_copies=1)),
     "does not learn the teachers' STS scores"),
    (ObjectiveConfig(mnrl=MnrlConfig(tasks=("quora",), only=True),
                     distillation=DistillationConfig(teachers=("t",), altered_copies=1)), "gold positive pairs alone"),
])
def test_altered_copies_that_could_not_learn_are_refused(objective, message):
    model = ModelConfig(tasks=("sst", "quora", "sts"), pair_heads={"quora": "bi_concat", "sts": "bi_cosine"})
    with pytest.raises(ConfigError, match=message):
        check_objective(objective, model)


@pytest.fixture(scope="module")
def teacher(tiny_checkpoint, tiny_data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    train_and_evaluate(tiny_training_config(tiny_checkpoint, tiny_data_dir, root / "cache", num_epochs=1),
                       root / "teacher")
    return root / "teacher"


def test_a_student_learns_from_targets_computed_once(teacher, tiny_checkpoint, tiny_data_dir, tmp_path, capsys):
    """The teacher's targets of the training records and of one altered copy of each, scored once
    and kept; the altered copies train on their targets alone, in the same epochs."""
    config = tiny_training_config(tiny_checkpoint, tiny_data_dir, tmp_path / "cache", num_epochs=1, seed=3,
                                  objective__distillation__teachers=(str(teacher),),
                                  objective__distillation__weight=0.7,
                                  objective__distillation__altered_copies=1)
    train_and_evaluate(config, tmp_path / "student")
    out = capsys.readouterr().out
    assert "scoring" in out and "teacher run(s) (once)" in out
    assert "altered copies of the training records with 1 teacher run(s) (once)" in out
    assert "its own way" not in out  # a teacher that reads as the student scores the student's own tokens
    # The kept targets are the teacher's own probabilities (scores) of each training record, in
    # file order, and of each altered copy, as evaluate.py scores them read back from a task file.
    trained = load_trained(teacher)
    with np.load(tmp_path / "student" / TARGETS_FILE) as saved, \
            np.load(tmp_path / "student" / ALTERED_TARGETS_FILE) as saved_altered:
        for task in ("sst", "quora", "sts"):
            path = tiny_data_dir / TASKS[task].file_name("train")
            outputs, _ = predict_file(trained, task, path, 16)
            assert np.allclose(saved[f"{task}/targets"], TASKS[task].kind.probabilities(outputs), atol=1e-5)
            records = read_task_file(path, task, lenient=True)
            assert f"{task} train: {2 * len(records)} records" in out  # every record, then its altered copy
            altered = write_task_file(altered_copies(records, 1, seed=3), task, tmp_path / f"{task}-altered.csv")
            outputs, _ = predict_file(trained, task, altered, 16)
            np.testing.assert_allclose(saved_altered[f"{task}/targets"], TASKS[task].kind.probabilities(outputs),
                                       atol=1e-5, err_msg=task)
    saved_config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert saved_config["objective"]["distillation"]["teachers"] == [str(teacher)]
    # A longer run of the same student resumes and reads the targets back instead of scoring again.
    config.num_epochs = 2
    train_and_evaluate(config, tmp_path / "student")
    out = capsys.readouterr().out
    assert "the teachers' targets read from" in out and "targets of the altered copies read from" in out
    assert "scoring" not in out and "warning" not in out
    # A damaged targets file (a flipped byte) is said in one line and scored again, to the same targets.
    with np.load(tmp_path / "student" / TARGETS_FILE) as saved:
        before = {k: saved[k] for k in saved.files}
    damaged = bytearray((tmp_path / "student" / TARGETS_FILE).read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (tmp_path / "student" / TARGETS_FILE).write_bytes(bytes(damaged))
    config.num_epochs = 3
    train_and_evaluate(config, tmp_path / "student")
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and TARGETS_FILE in warnings[0] and "computing it again" in warnings[0], out
    assert "scoring" in out
    with np.load(tmp_path / "student" / TARGETS_FILE) as saved:
        assert all(np.array_equal(saved[k], v) for k, v in before.items())


def teacher_scores(teacher, data_dir, task, records=None) -> np.ndarray:
    """The teacher's own probabilities (scores) of a training file's records, as evaluate.py
    predicts them (its own tokenizer, max_length and pair encoding), the first `records`."""
    outputs, _ = predict_file(load_trained(teacher), task, data_dir / TASKS[task].file_name("train"), 16)
    return TASKS[task].kind.probabilities(outputs)[:records]


def test_a_teacher_that_reads_differently_scores_its_own_reading(teacher, tiny_checkpoint, tiny_data_dir, tmp_path,
                                                                 capsys):
    """The student reads shorter sequences and Quora's pairs apart, and trains on the first 40
    records: the teacher (max_length 32, cross-encoded) scores its own tokens of those records."""
    config = tiny_training_config(tiny_checkpoint, tiny_data_dir, tmp_path / "cache", num_epochs=1,
                                  max_length=24, max_train_records=40,
                                  model__pair_heads={"quora": "bi_concat", "sts": "cross"},
                                  objective__distillation__teachers=(str(teacher),))
    train_and_evaluate(config, tmp_path / "student")
    out = capsys.readouterr().out
    assert f"{teacher} reads sst its own way (bert tokenizer, max_length=32)" in out
    for task in ("quora", "sts"):
        assert f"{teacher} reads {task} its own way (bert tokenizer, max_length=32, cross-encoded pairs)" in out
    with np.load(tmp_path / "student" / TARGETS_FILE) as saved:
        for task in ("sst", "quora", "sts"):
            assert saved[f"{task}/targets"].shape[0] == 40
            np.testing.assert_allclose(saved[f"{task}/targets"], teacher_scores(teacher, tiny_data_dir, task, 40),
                                       atol=1e-5, err_msg=task)


def _records(ids: list[str], labels: list[int]) -> TaskData:
    segments = Segments.from_lists([np.array([101, 7 + i, 102]) for i in range(len(ids))],
                                   [np.zeros(3, np.int8)] * len(ids))
    return TaskData("quora", "train", np.asarray(ids), np.asarray(labels, np.int32), (segments,), 0, [])


def test_a_teacher_s_reading_is_aligned_by_record_id_and_position(tmp_path):
    whole = _records(["a", "b", "a", "c", "a"], [0, 1, 1, 0, 1])
    # MNRL's positives of the file (an "a" repeated, its second and third occurrences kept) ...
    assert aligned_positions(whole, whole.subset(np.array([1, 2, 4])), tmp_path).tolist() == [1, 2, 4]
    # ... a cut to the first records, and the file itself.
    assert aligned_positions(whole, whole.subset(np.arange(3)), tmp_path).tolist() == [0, 1, 2]
    assert aligned_positions(whole, whole, tmp_path).tolist() == list(range(5))
    with pytest.raises(DataError, match=r"the student's training record 1 \(id 'z'\) is not there"):
        aligned_positions(whole, _records(["a", "z"], [0, 0]), tmp_path)
    with pytest.raises(DataError, match=r"record 1 \(id 'a'\)"):  # out of the file's order
        aligned_positions(whole, whole.subset(np.array([3, 0])), tmp_path)


def test_an_mpnet_teacher_distils_into_a_bert_student(tiny_checkpoint, tiny_data_dir, minilm_dir, tmp_path, capsys):
    """Another architecture and tokenizer: the MPNet teacher scores its own `<s> a </s></s> b </s>`
    tokens of the training file, once, and the BERT student trains against them."""
    pytest.importorskip("torch")
    from mpnet_checkpoints import save_torch_mpnet
    from test_task_export import trained_model, write_workdir

    # A run's workdir as training leaves it (its heads drawn at random: no need to spend a training on it).
    mpnet = save_torch_mpnet(tmp_path / "mpnet", minilm_dir / "vocab.txt")
    teacher = write_workdir(tmp_path / "teacher", trained_model(mpnet, tiny_data_dir))
    config = tiny_training_config(tiny_checkpoint, tiny_data_dir, tmp_path / "cache", num_epochs=1, max_steps=4,
                                  objective__distillation__teachers=(str(teacher),),
                                  objective__distillation__weight=0.7)
    result = train_and_evaluate(config, tmp_path / "student")
    assert result["step"] == 4 and np.isfinite(result["best_score"])
    out = capsys.readouterr().out
    assert f"{teacher} reads quora its own way (mpnet tokenizer, max_length=32, cross-encoded pairs)" in out
    with np.load(tmp_path / "student" / TARGETS_FILE) as saved:
        for task in ("sst", "quora", "sts"):
            np.testing.assert_allclose(saved[f"{task}/targets"], teacher_scores(teacher, tiny_data_dir, task),
                                       atol=1e-5, err_msg=task)


def write_task_file(records, task: str, path):
    """Records in the task files' format (a header, tab-separated): read back by evaluate.py."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(("id",) + TASKS[task].text_columns)
        writer.writerows(zip(records.record_ids, *records.texts))
    return path
