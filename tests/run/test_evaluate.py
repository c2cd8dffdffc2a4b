"""evaluate.py: metrics, predictions in the course's format, reports, plots, bad input."""

from __future__ import annotations

import json
import shutil
import tracemalloc

import numpy as np
import pytest
from scipy import stats

import evaluate
import mtbert_jax.run.evaluate as run_evaluate
from conftest import tiny_training_config, write_tsv
from mtbert_jax.evaluation.metrics import classification_report, overall_score
from mtbert_jax.run.checkpointing import write_digest
from mtbert_jax.run.evaluate import load_trained, predict_file
from mtbert_jax.run.loop import train_and_evaluate
from mtbert_jax.tasks import TASKS

PNG = b"\x89PNG\r\n\x1a\n"


def test_metrics_against_numpy_and_scipy():
    rng = np.random.default_rng(0)
    predicted, gold = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    assert TASKS["sst"].kind.metrics(predicted, gold)["accuracy"] == pytest.approx(np.mean(predicted == gold))
    scores, gold_scores = rng.uniform(0, 5, 100), rng.uniform(0, 5, 100)
    metrics = TASKS["sts"].kind.metrics(scores, gold_scores)
    assert metrics["pearson"] == pytest.approx(np.corrcoef(scores, gold_scores)[0, 1])
    assert metrics["spearman"] == pytest.approx(stats.spearmanr(scores, gold_scores).statistic)
    assert overall_score({"sst": {"accuracy": 0.5}, "quora": {"accuracy": 0.8}, "sts": {"pearson": 0.6}}) \
        == pytest.approx((0.5 + 0.8 + 0.8) / 3)


def test_classification_report_by_hand():
    report = classification_report(np.array([0, 0, 1, 1, 1, 2]), np.array([0, 1, 1, 1, 2, 2]), 3)
    assert report["confusion_matrix"] == [[1, 0, 0], [1, 2, 0], [0, 1, 1]]
    assert report["per_class"]["1"] == {"precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 3),
                                        "f1": pytest.approx(2 / 3), "support": 3}
    assert report["per_class"]["0"]["precision"] == 0.5 and report["per_class"]["2"]["recall"] == 0.5


@pytest.fixture(scope="module")
def trained_run(tiny_checkpoint, tiny_data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_run")
    config = tiny_training_config(tiny_checkpoint, tiny_data_dir, root / "cache", num_epochs=2,
                                  schedule__kind="all_tasks_until_smallest")
    train_and_evaluate(config, root / "run")
    # test-student files (no labels, the extra header field) for the single-sentence task
    test = ["0\t\tid\tsentence", "1\t0.0\tt1\tgreat film film", "2\t1.0\tt2\tawful plot"]
    write_tsv(tiny_data_dir / "ids-sst-test-student.csv", test)
    return root / "run"


def test_end_to_end_with_predictions_reports_and_plots(trained_run, tiny_data_dir, capsys):
    assert evaluate.main(["--workdir", str(trained_run), "--split", "both"]) == 0
    said = capsys.readouterr()
    assert "overall" in said.out
    assert "sts: sts-dev.csv" in said.err and "record" in said.err  # a progress bar per file scored
    out = trained_run / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["dev"]) == {"sst", "quora", "sts", "overall"}
    assert len(metrics["dev"]["sst"]["confusion_matrix"]) == 5
    # Predictions line up with the input ids, in the course's format.
    lines = (out / "predictions" / "sts-dev-output.csv").read_text().splitlines()
    assert lines[0] == "id \t Predicted_Similiary "  # sic, the starter's spelling
    ids = [line.split(" , ")[0] for line in lines[1:]]
    expected = [line.split("\t")[1] for line in (tiny_data_dir / "sts-dev.csv").read_text().splitlines()[1:]]
    assert ids == expected
    test_lines = (out / "predictions" / "sst-test-output.csv").read_text().splitlines()
    assert [line.split(" , ")[0] for line in test_lines[1:]] == ["t1", "t2"]
    assert all(line.split(" , ")[1].strip() in "01234" for line in test_lines[1:])
    for name in ("training_curves.png", "confusion-sst-dev.png", "scatter-sts-dev.png"):
        assert (out / "plots" / name).read_bytes()[:8] == PNG
    # The dev metrics equal those the training run computed for the same checkpoint.
    records = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text().splitlines()]
    best = max((r for r in records if "dev" in r), key=lambda r: r["dev_overall"])
    assert metrics["dev"]["overall"] == pytest.approx(best["dev_overall"], abs=1e-6)


def test_a_new_evaluation_replaces_the_earlier_ones_predictions_and_keeps_the_cached_outputs(trained_run, tmp_path):
    """The same run evaluated again into the same --out, dev only this time: the earlier test
    predictions (of what may be another checkpoint) go; files that are not evaluate's stay."""
    out = tmp_path / "out"
    assert evaluate.main(["--workdir", str(trained_run), "--split", "both", "--out", str(out)]) == 0
    assert (out / "predictions" / "sst-test-output.csv").exists()
    (out / "dev-outputs-step1.npz").write_bytes(b"compare's cache")
    assert evaluate.main(["--workdir", str(trained_run), "--split", "dev", "--out", str(out)]) == 0
    predictions = sorted(p.name for p in (out / "predictions").iterdir())
    assert predictions and not [p for p in predictions if "-test-" in p], predictions
    assert (out / "dev-outputs-step1.npz").read_bytes() == b"compare's cache"
    assert not list(tmp_path.glob(".out*"))  # no staging left


def test_any_file_in_the_format_and_a_bad_record(trained_run, tiny_data_dir, tmp_path, capsys):
    mine = tmp_path / "mine.csv"
    shutil.copyfile(tiny_data_dir / "sts-dev.csv", mine)
    assert evaluate.main(["--workdir", str(trained_run), "--task-file", f"dev:sts={mine}",
                          "--out", str(tmp_path / "out")]) == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("\tid\tsentence1\tsentence2\tsimilarity\n0\ta\tx\ty\t\n")
    capsys.readouterr()
    assert evaluate.main(["--workdir", str(trained_run), "--task-file", f"dev:sts={bad}",
                          "--out", str(tmp_path / "out2")]) == 2
    assert "bad.csv: line 2: similarity='' is empty" in capsys.readouterr().err


@pytest.mark.parametrize("spec, message", [
    ("dev:STS={sts}", "unknown task 'STS'"),
    ("val:sts={sts}", "unknown split 'val'"),
    ("test:sts={sts}", "this evaluation runs --split dev, not test"),
    ("dev:cfimdb={sts}", "the model has no cfimdb head"),
    ("dev:sts={missing}", "no such file"),
])
def test_a_task_file_that_would_not_be_used_is_refused(trained_run, tiny_data_dir, tmp_path, capsys, spec, message):
    """Before, each of these exited 0 after scoring the data directory's file instead."""
    spec = spec.format(sts=tiny_data_dir / "sts-dev.csv", missing=tmp_path / "nope.csv")
    out = tmp_path / "out"
    assert evaluate.main(["--workdir", str(trained_run), "--task-file", spec, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (out / "metrics.json").exists()


def test_a_dev_file_without_labels_is_an_error_not_a_missing_task(trained_run, tiny_data_dir, tmp_path, capsys,
                                                                  monkeypatch):
    """Before, the task vanished from the table and the overall score averaged the other two.
    Refused before any prediction: STS comes last, and the tasks before it are not scored first."""
    rows = (tiny_data_dir / "sts-dev.csv").read_text().splitlines()
    unlabelled = tmp_path / "sts-unlabelled.csv"
    unlabelled.write_text("".join("\t".join(line.split("\t")[:4]) + "\n" for line in rows))
    predicted = []
    real_predict_file = run_evaluate.predict_file
    monkeypatch.setattr(run_evaluate, "predict_file", lambda *a, **k: predicted.append(a[1]) or real_predict_file(*a, **k))
    assert evaluate.main(["--workdir", str(trained_run), "--task-file", f"dev:sts={unlabelled}",
                          "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "sts-unlabelled.csv: no 'similarity' column" in err and len(err.strip().splitlines()) == 1
    assert predicted == []
    # So is a test file that lacks a text column, before the dev files are scored.
    broken = tmp_path / "sts-broken.csv"
    broken.write_text("".join("\t".join(line.split("\t")[:3]) + "\n" for line in rows))
    assert evaluate.main(["--workdir", str(trained_run), "--split", "both", "--task-file",
                          f"test:sts={broken}", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "sts-broken.csv: line 1: header" in err and "lacks column(s) ['sentence2']" in err, err
    assert predicted == []
    # Unlabelled files as the test split: predictions, and no overall score over a part of the tasks.
    assert evaluate.main(["--workdir", str(trained_run), "--split", "test", "--task-file", f"test:sts={unlabelled}",
                          "--out", str(tmp_path / "test")]) == 0
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert "overall" not in metrics["test"]
    assert len((tmp_path / "test" / "predictions" / "sts-test-output.csv").read_text().splitlines()) == len(rows)


def test_scoring_sentences_and_pairs(trained_run, capsys):
    assert evaluate.main(["--workdir", str(trained_run), "--sentence", "great film",
                          "--pair", "a car road", "a car road"]) == 0
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_task = {e["task"]: e for e in entries}
    assert len(by_task["sst"]["probabilities"]) == 5 and sum(by_task["sst"]["probabilities"]) == pytest.approx(1, abs=1e-3)
    assert 0 <= by_task["quora"]["paraphrase_probability"] <= 1 and "similarity" in by_task["sts"]


def test_both_pair_orders_score_a_pair_and_its_swap_alike(trained_run, tmp_path, capsys):
    pairs = ["--pair", "a car on the road", "two dogs", "--pair", "two dogs", "a car on the road"]

    def scores(orders):
        assert evaluate.main(["--workdir", str(trained_run), "--pair-orders", orders, *pairs]) == 0
        entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        return [(e["task"], e.get("similarity", e.get("paraphrase_probability"))) for e in entries]

    given, both = dict(enumerate(scores("given"))), dict(enumerate(scores("both")))
    assert [given[i][0] for i in range(4)] == ["quora", "quora", "sts", "sts"]
    assert given[2][1] != given[3][1]  # one order: the cross-encoder tells them apart
    assert both[0] == both[1] and both[2] == both[3]
    assert both[2][1] == pytest.approx((given[2][1] + given[3][1]) / 2, abs=1e-4)  # STS: the mean score
    low, high = sorted((given[0][1], given[1][1]))
    assert low <= both[0][1] <= high  # Quora: the sigmoid of the mean logit lies between the two
    assert evaluate.main(["--workdir", str(trained_run), "--pair-orders", "both", "--out", str(tmp_path / "e")]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["symmetric_pairs"] is True and set(metrics["dev"]) == {"sst", "quora", "sts", "overall"}


def test_export_from_the_training_checkpoint(trained_run, tmp_path):
    assert evaluate.main(["--workdir", str(trained_run), "--export-hf", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").exists() and (tmp_path / "hf" / "vocab.txt").exists()


def test_bad_checkpoints(trained_run, tmp_path, capsys):
    assert evaluate.main(["--workdir", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    # A config that does not describe the saved parameters (different adapters).
    changed = tmp_path / "changed"
    shutil.copytree(trained_run, changed)
    for meta in changed.glob("*/*/meta/metadata"):
        data = json.loads(meta.read_text())
        data["config"]["model"]["adapter"] = "pals"
        meta.write_text(json.dumps(data))
        write_digest(meta.parents[1])  # saved so: not damage, a config that does not fit
    assert evaluate.main(["--workdir", str(changed)]) == 2
    assert "do not match the model its config describes" in capsys.readouterr().err
    # A damaged checkpoint.
    broken = tmp_path / "broken"
    shutil.copytree(trained_run, broken)
    for f in broken.glob("best/*/state/**/*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(f.read_bytes()[:100])
    assert evaluate.main(["--workdir", str(broken)]) == 2
    assert "error:" in capsys.readouterr().err


def _pairs_file(path, n):
    rng = np.random.default_rng(0)
    words = np.array(["car", "road", "tree", "bird", "film", "plot"])
    lines = ["\tid\tsentence1\tsentence2\tsimilarity"]
    lines += [f"{i}\tid{i}\t{' '.join(rng.choice(words, 5))}\t{' '.join(rng.choice(words, 5))}\t{i % 6}.0"
              for i in range(n)]
    return write_tsv(path, lines)


def test_memory_does_not_grow_with_the_file(trained_run, tmp_path):
    trained = load_trained(trained_run)
    peaks = {}
    for n in (4_000, 40_000):
        path = _pairs_file(tmp_path / f"sts-{n}.csv", n)
        predict_file(trained, "sts", path, 128, chunk_size=2_000)  # compile outside the measurement
        tracemalloc.start()
        outputs, _ = predict_file(trained, "sts", path, 128, chunk_size=2_000,
                                     out_file=tmp_path / f"out-{n}.csv")
        peaks[n] = tracemalloc.get_traced_memory()[1] - outputs.nbytes * 3  # less the predictions
        tracemalloc.stop()
        assert len(outputs) == n
    print(f"peak traced memory less predictions: {peaks}")
    assert peaks[40_000] < 1.5 * peaks[4_000], peaks
