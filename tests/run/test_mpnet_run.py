"""MPNet through the whole project: a tiny random MPNet trains, evaluates and exports its task
models (checked against the run's predictions to 1e-4, each with its model card), swaps its pairs'
sentences (schedule.swap_pairs, model.symmetric_pairs); a max_length past its positions is refused
in one line. (Every pooling, head, adapter and objective on MPNet: tests/model/test_mpnet_multitask.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
sentence_transformers = pytest.importorskip("sentence_transformers")

from mpnet_checkpoints import save_torch_mpnet  # noqa: E402
from test_task_export import assert_card, trained_model, write_workdir  # noqa: E402

from conftest import tiny_training_config  # noqa: E402
from mtbert_jax.data.task_files import read_task_file  # noqa: E402
from mtbert_jax.errors import CheckpointError, ConfigError  # noqa: E402
from mtbert_jax.run import convert  # noqa: E402
from mtbert_jax.run.evaluate import evaluate_run, load_trained, predict_file, predict_records, text_records  # noqa: E402
from mtbert_jax.run.loop import train_and_evaluate  # noqa: E402
from mtbert_jax.run.task_export import in_float32, run_outputs  # noqa: E402
from mtbert_jax.tasks import TASKS  # noqa: E402

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def mpnet_dir(tmp_path_factory, minilm_dir):
    return save_torch_mpnet(tmp_path_factory.mktemp("mpnet") / "model", minilm_dir / "vocab.txt")


def test_a_trained_mpnet_run_evaluates_and_exports(mpnet_dir, tiny_data_dir, tmp_path, capsys):
    """Mean pooling and cross-encoder heads (the default recipe), packed, a few steps; the
    exports are sentence-transformers directories of an MPNet Transformer and mean pooling."""
    config = tiny_training_config(mpnet_dir, tiny_data_dir, tmp_path / "cache", num_epochs=1, max_steps=6)
    run = tmp_path / "run"
    result = train_and_evaluate(config, run)
    assert np.isfinite(result["best_score"])
    metrics = evaluate_run(run)
    assert set(metrics["dev"]) >= {"sst", "quora", "sts"}

    out = tmp_path / "hf"
    assert convert.main(["--checkpoint", str(run), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    for task in ("sst", "quora", "sts"):
        assert f"{task}: SentenceTransformer in {out / task}; outputs equal the run's float32 predictions" in said
        # Its card: evaluate.py's metrics of the exported step, the flags that made it an MPNet run.
        card = assert_card(out / task, task, (f"evaluate.py's {run / 'eval' / 'metrics.json'}",
                                              f"--config.checkpoint={mpnet_dir}",
                                              "encoder: MPNetModel, 2 layers, hidden 32"))
        for name, value in metrics["dev"][task].items():
            if isinstance(value, float):
                assert f"| {task} {name} | {value:.4f} |" in card
    assert type(transformers.AutoModel.from_pretrained(str(out))).__name__ == "MPNetModel"  # the encoder alone
    # The exports against evaluate.py's predictions of the dev records, as a user loads them.
    trained = in_float32(load_trained(run))
    for task in ("sst", "quora", "sts"):
        model = sentence_transformers.SentenceTransformer(str(out / task), device="cpu")
        assert type(model[0].auto_model).__name__ == "MPNetModel"
        assert json.loads((out / task / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"]
        path = tiny_data_dir / TASKS[task].file_name("dev")
        expected, _ = predict_file(trained, task, path, batch_size=8)
        texts = read_task_file(path, task).texts
        got = model.encode(list(zip(*texts)) if TASKS[task].is_pair else texts[0], convert_to_numpy=True)
        got = got[:, 0] if TASKS[task].is_pair else got
        np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0, err_msg=task)


@pytest.mark.parametrize("changes, formats", [
    ({"model__pooling": "pooler"}, {"sst": "MPNetForSequenceClassification", "quora": "MPNetForSequenceClassification"}),
    ({"model__adapter": "pals", "model__adapter_size": 12, "model__adapter_heads": 3, "model__pooling": "max",
      "model__pair_heads": {"quora": "bi_concat_diff_prod", "sts": "cosine"}},
     {"sst": "MPNetModel + head.safetensors", "quora": "MPNetModel + head.safetensors"}),
    ({"model__adapter": "low_rank_top_layer", "model__adapter_size": 8, "model__pooling": "cls"},
     {"sst": "MPNetModel + head.safetensors", "sts": "MPNetModel + head.safetensors"}),
], ids=["pooler", "pals-bi", "low_rank_top_layer"])
def test_other_heads_export_as_mpnet_classes(mpnet_dir, tiny_data_dir, tmp_path, capsys, changes, formats):
    """Pooler heads are MPNetForSequenceClassification (its head: tanh dense, linear); adapters
    and bi-encoders the encoder plus head.safetensors for torch_task_model.TaskModel. convert
    checks each against the run's predictions to 1e-4 and says so."""
    trained = trained_model(mpnet_dir, tiny_data_dir, **changes)
    out = tmp_path / "hf"
    assert convert.main(["--checkpoint", str(write_workdir(tmp_path / "run", trained)), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    for task, name in formats.items():
        assert f"{task}: {name} in {out / task}" in said
    assert said.count("outputs equal the run's float32 predictions") == 3
    if formats.get("quora") == "MPNetForSequenceClassification":  # a CrossEncoder too, scoring `<s> a </s></s> b </s>`
        pairs = [("A man plays a guitar.", "Someone plays music."), ("Why?", "How old are you, and why do you ask?")]
        got = sentence_transformers.CrossEncoder(str(out / "quora"), device="cpu").predict(pairs)
        np.testing.assert_allclose(got, run_outputs(trained, "quora", pairs), atol=TOLERANCE, rtol=0)


def test_a_longer_max_length_than_mpnet_s_positions_is_refused_in_one_line(mpnet_dir, tiny_data_dir, tmp_path):
    config = tiny_training_config(mpnet_dir, tiny_data_dir, tmp_path / "cache", max_length=513)
    with pytest.raises(ConfigError) as refused:
        train_and_evaluate(config, tmp_path / "run")
    said = ("max_length=513 is more than the checkpoint's max_position_embeddings=514 less the 2 rows before mpnet's "
            "first position")
    assert said in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "run").exists()


def test_an_mpnet_run_trains_and_scores_pairs_in_both_orders(mpnet_dir, tiny_data_dir, tmp_path):
    """schedule.swap_pairs and model.symmetric_pairs on `<s> a </s></s> b </s>`: the run trains and
    evaluates, and its prediction of a pair is the mean of its predictions of (a, b) and (b, a),
    each tokenized by MPNet's own tokenizer."""
    config = tiny_training_config(mpnet_dir, tiny_data_dir, tmp_path / "cache", num_epochs=1, max_steps=4,
                                  schedule__swap_pairs=True, model__symmetric_pairs=True)
    run = tmp_path / "run"
    assert np.isfinite(train_and_evaluate(config, run)["best_score"])
    metrics = evaluate_run(run)
    assert metrics["symmetric_pairs"] is True and set(metrics["dev"]) >= {"quora", "sts"}
    trained = load_trained(run)
    for task in ("quora", "sts"):
        pairs = list(zip(*read_task_file(tiny_data_dir / TASKS[task].file_name("dev"), task).texts))[:8]
        forward, backward = run_outputs(trained, task, pairs), run_outputs(trained, task, [(b, a) for a, b in pairs])
        assert not np.allclose(forward, backward, atol=1e-4), task  # the orders differ: the mean means something
        both = predict_records(trained, text_records(task, pairs), 8)
        np.testing.assert_allclose(both, (forward + backward) / 2, atol=1e-5, rtol=0, err_msg=task)


def test_an_mpnet_checkpoint_that_is_not_installed_names_the_command(tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MTBERT_MODELS_DIR", str(tmp_path / "models"))
    config = tiny_training_config(tmp_path, tiny_data_dir, tmp_path / "cache")
    config.checkpoint = "all-mpnet-base-v2"
    with pytest.raises(CheckpointError, match=r"all-mpnet-base-v2 is not installed .*run `bash setup.sh --models`"):
        train_and_evaluate(config, tmp_path / "run")
