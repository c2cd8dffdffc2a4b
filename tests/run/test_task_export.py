"""convert.py's task models: each head loads in stock PyTorch classes (or torch_task_model.py)
and reproduces the run's own predictions on real records to 1e-4; each directory has its model
card."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from flax import traverse_util

from conftest import tiny_training_config
from mtbert_jax.checkpoints import task_models
from mtbert_jax.checkpoints.hf import load_hf_checkpoint
from mtbert_jax.checkpoints.tokenizer import BertTextTokenizer
from mtbert_jax.data.task_files import read_task_file
from mtbert_jax.model.bert_config import BertConfig
from mtbert_jax.model.config import ModelConfig
from mtbert_jax.run import convert
from mtbert_jax.run.build import build_model, concrete_dtype, encoder_config, parameter_shapes
from mtbert_jax.run.checkpointing import Checkpoints
from mtbert_jax.run.compare import default_config
from mtbert_jax.run.config import RunConfig
from mtbert_jax.run.evaluate import predict_file
from mtbert_jax.run.model_card import model_card
from mtbert_jax.run.task_export import TaskExport, export_task_model, in_float32
from mtbert_jax.run.trained import TrainedModel
from mtbert_jax.tasks import TASKS

torch = pytest.importorskip("torch")
sentence_transformers = pytest.importorskip("sentence_transformers")
TOLERANCE = 1e-4
RECORDS = 6  # real dev records per task; CFIMDB's reviews run past max_length, so truncation is compared too


def trained_model(checkpoint: Path, data_dir: Path, seed: int = 0, **changes) -> TrainedModel:
    """A run as training leaves it, without training (nor compiling an init): the tiny
    checkpoint's encoder moved a little and every task-specific tensor drawn at random, of unit
    scale, so that an export of the wrong tensors, or of a layer in the wrong layout, is far
    outside 1e-4."""
    config = tiny_training_config(checkpoint, data_dir, checkpoint.parent / "cache", **changes)
    run, _ = concrete_dtype(RunConfig.from_dict(config))
    bert_config = encoder_config(run, BertConfig.from_json_file(checkpoint / "config.json"))
    _, encoder, _ = load_hf_checkpoint(checkpoint)
    encoder = traverse_util.flatten_dict(encoder)
    rng = np.random.default_rng(seed)
    flat = {}
    for path, shape in traverse_util.flatten_dict(parameter_shapes(run, bert_config)).items():
        if path[:2] == ("bert", "pooler"):  # its N(0, 0.02) start would leave every pooled vector near 0
            flat[path] = rng.normal(0, 0.3, shape.shape)
        elif path[0] == "bert":
            flat[path] = encoder[path[1:]] + rng.normal(0, 0.02, shape.shape)
        else:
            flat[path] = rng.normal(0, 0.5, shape.shape)
    params = traverse_util.unflatten_dict({k: v.astype(np.float32) for k, v in flat.items()})
    return TrainedModel(run, build_model(run, bert_config), params, BertTextTokenizer(checkpoint), 1)


def write_workdir(workdir: Path, trained: TrainedModel, dev: dict | None = None) -> Path:
    """The run's checkpoint as train.py saves it; `dev` ({task: metrics}): its dev record in
    metrics.jsonl too, as the training log keeps it."""
    train = {"params": trained.params, "opt_state": (np.zeros(1, np.float32),), "step": np.int32(1)}
    checkpoints = Checkpoints(workdir)
    checkpoints.save(1, {"train": train, "loader": {"epoch": np.int32(1)}},
                     {"config": dataclasses.asdict(trained.run), "step": 1}, score=0.5)
    checkpoints.close()
    if dev is not None:
        records = [{"step": 1, "loss": 1.0}, {"step": 1, "epoch": 1, "dev": dev, "dev_overall": 0.5}]
        (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return workdir


DEV = {"sst": {"accuracy": 0.3125}, "cfimdb": {"accuracy": 0.875}, "quora": {"accuracy": 0.6875},
       "sts": {"pearson": 0.4375, "spearman": 0.40625}}


def assert_card(directory: Path, task: str, said: tuple[str, ...]) -> str:
    """The task directory's README.md: front matter, the task, its outputs and what the test says
    it must hold (metrics, flags, the class)."""
    card = (directory / "README.md").read_text()
    assert card.startswith("---\n") and "\ntags:\n- mtbert-jax\n" in card, card
    assert f"\n# {task}: fine-tuned from " in card and "python train.py --config configs/default.py --workdir" in card
    assert "max abs difference" in card and "## Loading" in card
    meaning = {"sst": "0 very negative, 1 negative, 2 neutral, 3 positive, 4 very positive",
               "cfimdb": "0 negative, 1 positive", "quora": "labels 0 (not a paraphrase) and 1 (a paraphrase)",
               "sts": "0-5 scale"}[task]
    for text in (meaning, *said):
        assert text in card, f"{task}: {text!r} not in\n{card}"
    return card


def as_given_in_float32(trained: TrainedModel) -> TrainedModel:
    """The run predicting in float32, each pair in the order given: what an export computes."""
    return in_float32(dataclasses.replace(trained, run=dataclasses.replace(
        trained.run, model=dataclasses.replace(trained.run.model, symmetric_pairs=False))))


def expected_outputs(trained: TrainedModel, task: str, dev_file: Path) -> np.ndarray:
    """evaluate.py's predictions (predict_file) of the records."""
    outputs, _ = predict_file(trained, task, dev_file, batch_size=4)
    return outputs


@pytest.fixture(scope="module")
def dev_files(data_dir, tmp_path_factory) -> dict[str, Path]:
    """The first records of each real dev file, as files of the course's format."""
    root = tmp_path_factory.mktemp("dev")
    files = {}
    for task, spec in TASKS.items():
        lines = (data_dir / spec.file_name("dev")).read_text(encoding="utf-8").splitlines()
        files[task] = root / spec.file_name("dev")
        files[task].write_text("\n".join(lines[:RECORDS + 1]) + "\n", encoding="utf-8")
    return files


def texts(path: Path, task: str) -> list:
    """The records' sentences, or (sentence1, sentence2) pairs, as the project reads them."""
    records = read_task_file(path, task)
    return list(zip(*records.texts)) if TASKS[task].is_pair else records.texts[0]


def run_convert(workdir: Path, out: Path, capsys) -> str:
    assert convert.main(["--checkpoint", str(workdir), "--out", str(out)]) == 0
    return capsys.readouterr().out


def assert_close(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0, err_msg=what)
    assert np.ptp(expected, axis=0).max() > 100 * TOLERANCE, f"{what}: outputs this alike would hide a wrong encoder"


def test_pooler_heads_are_bert_sequence_classifiers_and_cross_encoders(tiny_checkpoint, tiny_data_dir, dev_files,
                                                                       tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertModel

    trained = trained_model(tiny_checkpoint, tiny_data_dir, model__pooling="pooler",
                            model__tasks=("sst", "cfimdb", "quora", "sts"))
    out = tmp_path / "hf"
    said = run_convert(write_workdir(tmp_path / "run", trained, DEV), out, capsys)
    trained = as_given_in_float32(trained)
    assert BertModel.from_pretrained(out).config.architectures == ["BertModel"]  # DIR itself: the encoder, as before
    for task in ("sst", "cfimdb", "quora", "sts"):
        assert f"{task}: BertForSequenceClassification in {out / task}; outputs equal" in said
        # The card: the training log's dev record of the exported step, the flags that differ
        # from configs/default.py (a tuple once per value), the class that loads it.
        metrics = [f"| {task} {k} | {v:.4f} |" for k, v in DEV[task].items()]
        assert_card(out / task, task, (
            *metrics, "| the run's overall score (all its tasks) | 0.5000 |", "dev record of step 1",
            "--config.model.pooling=pooler", "--config.model.tasks=sst \\\n    --config.model.tasks=cfimdb",
            "--config.max_length=32", "CrossEncoder" if TASKS[task].is_pair else "AutoModelForSequenceClassification",
            "Written as: BertForSequenceClassification; encoder: BertModel, 2 layers, hidden 32.",
            "see the base checkpoint's own licence"))
        model = AutoModelForSequenceClassification.from_pretrained(out / task).eval()
        tokenizer = AutoTokenizer.from_pretrained(out / task)
        expected = expected_outputs(trained, task, dev_files[task])
        items = texts(dev_files[task], task)
        columns = [list(c) for c in zip(*items)] if TASKS[task].is_pair else [items]
        with torch.inference_mode():
            logits = model(**tokenizer(*columns, padding=True, truncation=True, return_tensors="pt")).logits.numpy()
        if TASKS[task].is_pair:
            assert_close(logits[:, 0], expected, task)
            cross_encoder = sentence_transformers.CrossEncoder(str(out / task), device="cpu")
            assert_close(cross_encoder.predict(items), expected, f"{task} CrossEncoder")
            assert model.config.id2label == {0: TASKS[task].label_column}
        else:
            assert_close(logits, expected, task)
            assert list(model.config.id2label.values()) == list(task_models.CLASS_NAMES[task])
            assert model.config.label2id == {n: i for i, n in enumerate(task_models.CLASS_NAMES[task])}


@pytest.fixture(scope="module")
def mean_run(tiny_checkpoint, tiny_data_dir, tmp_path_factory) -> tuple[TrainedModel, Path]:
    """The default's mean pooling and cross-encoder heads, in bfloat16, predicting both pair orders."""
    trained = trained_model(tiny_checkpoint, tiny_data_dir, compute_dtype="bfloat16", model__symmetric_pairs=True)
    return trained, write_workdir(tmp_path_factory.mktemp("mean") / "run", trained)


def test_mean_pooling_heads_are_sentence_transformers(mean_run, dev_files, tmp_path, capsys):
    trained, workdir = mean_run
    out = tmp_path / "hf"
    said = run_convert(workdir, out, capsys)
    symmetric, trained = in_float32(trained), as_given_in_float32(trained)
    assert "note: the run computes in bfloat16: the exports are float32" in said
    assert "average the outputs of (a, b) and (b, a)" in said
    for task in ("sst", "quora", "sts"):
        assert f"{task}: SentenceTransformer in {out / task}; outputs equal" in said
        assert_card(out / task, task, ("Not recorded: the run has no training log", "SentenceTransformer(",
                                       "--config.compute_dtype=bfloat16", "--config.model.symmetric_pairs=True",
                                       "average the outputs of (a, b) and (b, a)"))
        modules = json.loads((out / task / "modules.json").read_text())
        assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Dense"]
        model = sentence_transformers.SentenceTransformer(str(out / task), device="cpu")
        got = model.encode(texts(dev_files[task], task))  # a (sentence1, sentence2) tuple: one cross-encoded input
        assert_close(got[:, 0] if TASKS[task].is_pair else got, expected_outputs(trained, task, dev_files[task]), task)
    # The run's own prediction, both orders averaged, is the mean of the export's two.
    model = sentence_transformers.SentenceTransformer(str(out / "sts"), device="cpu")
    pairs = texts(dev_files["sts"], "sts")
    both = (model.encode(pairs)[:, 0] + model.encode([(b, a) for a, b in pairs])[:, 0]) / 2
    assert_close(both, expected_outputs(symmetric, "sts", dev_files["sts"]), "sts, both orders")


def test_the_pooler_under_the_shared_pair_layer_is_dense_layers_of_a_sentence_transformer(
        tiny_checkpoint, tiny_data_dir, dev_files, tmp_path):
    trained = as_given_in_float32(trained_model(tiny_checkpoint, tiny_data_dir, model__tasks=("quora", "sts"),
                                                model__pooling="pooler", model__shared_pair_hidden=True))
    export = export_task_model(trained, "quora", tmp_path / "quora")
    assert export.format == task_models.SENTENCE_TRANSFORMER and export.difference <= TOLERANCE, export
    activations = [json.loads((tmp_path / "quora" / f"{i}_Dense" / "config.json").read_text())["activation_function"]
                   for i in (2, 3, 4)]
    assert activations == [task_models._TANH, task_models._GELU, task_models._IDENTITY]  # pooler, shared, head
    model = sentence_transformers.SentenceTransformer(str(tmp_path / "quora"), device="cpu")
    pairs = texts(dev_files["quora"], "quora")
    assert_close(model.encode(pairs)[:, 0], expected_outputs(trained, "quora", dev_files["quora"]), "quora")


@pytest.mark.parametrize("model", [
    {"pooling": "max", "pair_heads": {"quora": "cosine", "sts": "bi_concat_diff_prod"}},
    {"pooling": "pooler", "pair_heads": {"quora": "bi_cosine_concat", "sts": "cosine"}},
    {"pooling": "cls", "pair_heads": {"quora": "bi_sum", "sts": "bi_sum"}, "shared_pair_hidden": True},
    {"pair_heads": {"quora": "bi_concat", "sts": "bi_cosine"}, "adapter": "pals", "adapter_size": 8,
     "adapter_heads": 2},
    {"tasks": ("sst", "quora", "sts"), "pooling": "pooler", "adapter": "low_rank_top_layer", "adapter_size": 8,
     "adapter_layers": "top"},
], ids=["cosine-diff_prod-max", "cosine_concat-cosine-pooler", "bi_sum-shared-cls", "pals-bi_concat-bi_cosine",
        "low_rank_top_layer-cross-pooler"])
def test_heads_no_stock_class_computes_are_the_encoder_with_the_head_for_torch(model, tiny_checkpoint, tiny_data_dir,
                                                                               dev_files, tmp_path):
    from mtbert_jax.checkpoints.torch_task_model import TaskModel

    trained = as_given_in_float32(trained_model(
        tiny_checkpoint, tiny_data_dir, **{f"model__{k}": v for k, v in {"tasks": ("quora", "sts"), **model}.items()}))
    for task in trained.run.model.tasks:
        export = export_task_model(trained, task, tmp_path / task)  # convert's own check passes ...
        assert export.format == task_models.ENCODER_AND_HEAD and export.difference <= TOLERANCE, export
        why = f"the {model['adapter']} adapters" if "adapter" in model else f"the {model['pair_heads'][task]} pair head"
        assert why in export.summary() and "torch_task_model.py" in export.summary()
        got = TaskModel(tmp_path / task).predict(texts(dev_files[task], task)).numpy()  # ... and the test's
        expected = expected_outputs(trained, task, dev_files[task])
        if expected.min() > 4.99:  # 5 sigmoid(20 cos) of these alike vectors is 5: a missing sigmoid still shows
            np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0, err_msg=task)
        else:
            assert_close(got, expected, task)


def test_an_export_that_computes_otherwise_is_refused_whole(mean_run, tmp_path, capsys, monkeypatch):
    """The check itself: a head written with the wrong activation fails it, and nothing is left."""
    _, workdir = mean_run
    monkeypatch.setattr(task_models, "_IDENTITY", task_models._TANH)
    out = tmp_path / "hf"
    assert convert.main(["--checkpoint", str(workdir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'sst'}: sentence_transformers.SentenceTransformer computes sst outputs that differ" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists() and not list(tmp_path.iterdir())


def test_encoder_only_writes_the_encoder_as_before(mean_run, tmp_path, capsys):
    _, workdir = mean_run
    assert convert.main(["--checkpoint", str(workdir), "--out", str(tmp_path / "hf"), "--encoder-only"]) == 0
    assert "SentenceTransformer" not in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "hf").iterdir() if p.is_dir()) == []


def test_a_card_names_a_known_base_checkpoint_and_its_licence(tmp_path):
    """The embedded MiniLM and the installed MPNet are Apache-2.0; the default config needs no flags."""
    from configs.default import get_config

    run = RunConfig.from_dict(get_config())
    export = TaskExport("quora", task_models.SEQUENCE_CLASSIFICATION, "", tmp_path / "quora", 2e-7, "",
                        "BertForSequenceClassification")
    card = model_card(run, "quora", export, "runs/x", "best", 7, None, "no record", default_config())
    assert "license: apache-2.0\nbase_model: sentence-transformers/all-MiniLM-L6-v2\n" in card
    assert "licence Apache-2.0" in card and "its best checkpoint (step 7)" in card
    assert "--workdir runs/x\n```" in card and "--config." not in card
    assert "max abs difference 2e-07" in card
    mpnet = dataclasses.replace(run, checkpoint="all-mpnet-base-v2", max_length=64)
    card = model_card(mpnet, "quora", export, "runs/x", "300", 300, None, "no record", default_config())
    assert "base_model: sentence-transformers/all-mpnet-base-v2" in card and "the checkpoint of step 300" in card
    assert "--config.checkpoint=all-mpnet-base-v2 \\\n    --config.max_length=64" in card


def test_a_card_s_metrics_are_those_of_the_exported_step(tmp_path):
    """evaluate.py's metrics of that step first, else the training log's dev record of it (a line
    cut by a kill passed over); another step's are not the exported model's."""
    from mtbert_jax.run.model_card import recorded_dev_metrics

    lines = [{"step": 4, "dev": {"sst": {"accuracy": 0.5}}, "dev_overall": 0.5},
             {"step": 8, "dev": {"sst": {"accuracy": 0.625}}, "dev_overall": 0.625}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 9, "de')
    assert recorded_dev_metrics(tmp_path, 4)[0] == {"sst": {"accuracy": 0.5}, "overall": 0.5}
    assert recorded_dev_metrics(tmp_path, 6) == (None, f"{tmp_path / 'metrics.jsonl'} holds no dev record of step 6")
    (tmp_path / "eval").mkdir()
    evaluated = {"workdir": str(tmp_path), "step": 8, "symmetric_pairs": False,
                 "dev": {"sst": {"accuracy": 0.75, "macro_f1": 0.25}}}
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(evaluated))
    metrics, source = recorded_dev_metrics(tmp_path, 8)
    assert metrics == evaluated["dev"] and "evaluate.py" in source
    assert recorded_dev_metrics(tmp_path, 4)[0]["sst"] == {"accuracy": 0.5}
    # Pairs scored otherwise than the run scores them (evaluate.py --pair-orders both): not its metrics.
    assert recorded_dev_metrics(tmp_path, 8, symmetric_pairs=True)[0]["sst"] == {"accuracy": 0.625}


@pytest.mark.parametrize("changes, expected", [
    ({}, {"sst": "SentenceTransformer", "quora": "SentenceTransformer"}),
    ({"pooling": "pooler"}, {"sst": "BertForSequenceClassification", "quora": "BertForSequenceClassification"}),
    ({"pooling": "pooler", "shared_pair_hidden": True},  # the shared layer: one Dense (GELU) more
     {"sst": "BertForSequenceClassification", "quora": "SentenceTransformer"}),
    ({"pair_heads": {"quora": "bi_cosine", "sts": "bi_sum"}},
     {"sst": "SentenceTransformer", "quora": task_models.ENCODER_AND_HEAD}),
    ({"adapter": "pals"}, {"sst": task_models.ENCODER_AND_HEAD, "quora": task_models.ENCODER_AND_HEAD}),
])
def test_which_format_each_head_gets(changes, expected):
    config = ModelConfig(**changes)
    assert {task: task_models.task_model_format(config, task)[0] for task in expected} == expected
