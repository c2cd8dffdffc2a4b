"""Several runs as one: ensembles (evaluate.py --workdir repeated, compare --ensembles) and
soups (soup.py), checked against the members' own outputs and parameters."""

from __future__ import annotations

import json
import math
import re

import jax
import numpy as np
import pytest

import compare
import evaluate
import soup
from conftest import tiny_training_config
from mtbert_jax.run import convert
from mtbert_jax.run.checkpointing import restore_trained
from mtbert_jax.run.evaluate import load_trained, predict_file
from mtbert_jax.run.loop import train_and_evaluate
from mtbert_jax.run.soup import mean_params
from mtbert_jax.tasks import TASKS


def test_averages_by_hand():
    sst, quora, sts = (TASKS[t].kind for t in ("sst", "quora", "sts"))
    a, b = np.array([[0.0, math.log(3)]]), np.array([[math.log(3), 0.0]])  # probabilities .25/.75 and .75/.25
    assert np.allclose(np.exp(sst.average([a, b])), [[0.5, 0.5]])
    assert np.allclose(np.exp(sst.average([a, b], [3, 1])), [[0.375, 0.625]])  # weights need not sum to 1
    # Quora: probabilities 0.5 and 0.75 average to 0.625, not to the sigmoid of the mean logit.
    logit = quora.average([np.array([0.0]), np.array([math.log(3)])])
    assert logit[0] == pytest.approx(math.log(0.625 / 0.375), abs=1e-6)
    assert quora.labels(quora.average([np.array([-0.1]), np.array([0.3])]))[0] == 1  # p = 0.5125 > 0.5
    assert np.allclose(sts.average([np.array([1.0, 4.0]), np.array([2.0, 5.0])], [1, 3]), [1.75, 4.75])
    one = np.array([[0.2, 0.1]], np.float32)
    assert sst.average([one]) is one  # one model: its outputs untouched


@pytest.fixture(scope="module")
def runs(tiny_checkpoint, tiny_data_dir, tmp_path_factory):
    """Two seeds of one tiny recipe, one run of another task set and one of another pooling."""
    root = tmp_path_factory.mktemp("several")
    made = {}
    for name, changes in (("a_s0", {"seed": 0}), ("a_s1", {"seed": 1}),
                          ("sst_only", {"model__tasks": ("sst",)}), ("pooler", {"model__pooling": "pooler"})):
        config = tiny_training_config(tiny_checkpoint, tiny_data_dir, root / "cache", num_epochs=1, **changes)
        train_and_evaluate(config, root / name)
        made[name] = root / name
    return made


def _dev_outputs(workdir, data_dir, which="best"):
    trained = load_trained(workdir, which)
    return {t: predict_file(trained, t, data_dir / TASKS[t].file_name("dev"), 16) for t in trained.run.model.tasks}


def test_an_ensemble_scores_and_writes_the_averaged_outputs(runs, tiny_data_dir, tmp_path, capsys):
    a, b = runs["a_s0"], runs["a_s1"]
    assert evaluate.main(["--workdir", str(a), "--workdir", str(b), "--out", str(tmp_path / "ens"),
                          "--batch-size", "16"]) == 0
    metrics = json.loads((tmp_path / "ens" / "metrics.json").read_text())
    assert metrics["workdir"] == [str(a), str(b)] and metrics["weights"] == [0.5, 0.5]
    each = [_dev_outputs(w, tiny_data_dir) for w in (a, b)]
    for task in ("sst", "quora", "sts"):
        gold = each[0][task][1]
        if task == "sts":
            expected = np.corrcoef((each[0][task][0] + each[1][task][0]) / 2, gold)[0, 1]
            assert metrics["dev"][task]["pearson"] == pytest.approx(expected, abs=1e-5)
            continue
        if task == "sst":
            probabilities = [np.exp(o[task][0]) / np.exp(o[task][0]).sum(-1, keepdims=True) for o in each]
            labels = ((probabilities[0] + probabilities[1]) / 2).argmax(-1)
        else:
            probabilities = [1 / (1 + np.exp(-o[task][0].astype(np.float64))) for o in each]
            labels = ((probabilities[0] + probabilities[1]) / 2 > 0.5).astype(int)
        assert metrics["dev"][task]["accuracy"] == pytest.approx(np.mean(labels == gold))
        written = [line.split(" , ")[1].strip() for line in
                   (tmp_path / "ens" / "predictions" / f"{'para' if task == 'quora' else task}-dev-output.csv")
                   .read_text().splitlines()[1:]]
        assert [int(float(x)) for x in written] == list(labels)
        assert metrics["dev"][task]["confusion_matrix"]  # the per-class report, as for one run


def test_a_weight_of_zero_leaves_one_run_exactly(runs, tmp_path):
    a, b = runs["a_s0"], runs["a_s1"]
    assert evaluate.main(["--workdir", str(a), "--out", str(tmp_path / "one")]) == 0
    assert evaluate.main(["--workdir", str(a), "--workdir", str(b), "--weights", "1,0",
                          "--out", str(tmp_path / "weighted")]) == 0
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())["dev"]
    weighted = json.loads((tmp_path / "weighted" / "metrics.json").read_text())["dev"]
    assert weighted == one
    for name in ("sst-dev-output.csv", "para-dev-output.csv", "sts-dev-output.csv"):
        assert (tmp_path / "weighted" / "predictions" / name).read_text() == \
            (tmp_path / "one" / "predictions" / name).read_text()


def test_sentences_scored_by_an_ensemble(runs, capsys):
    assert evaluate.main(["--workdir", str(runs["a_s0"]), "--workdir", str(runs["a_s1"]),
                          "--sentence", "great film", "--pair", "a car road", "a car road"]) == 0
    entries = {e["task"]: e for e in map(json.loads, capsys.readouterr().out.splitlines())}
    assert sum(entries["sst"]["probabilities"]) == pytest.approx(1, abs=1e-3)
    assert {"sst", "quora", "sts"} <= set(entries)


def _status(main, args) -> int:
    """A command's exit status, whether it returns it or argparse exits with it."""
    try:
        return main(args)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("extra, message", [
    ([], "writes its outputs to --out DIR"),
    (["--out", "OUT", "--weights", "1"], "expected 2 finite non-negative numbers"),
    (["--out", "OUT", "--weights", "1,-1"], "expected 2 finite non-negative numbers"),
    (["--out", "OUT", "--weights", "a,b"], "expected numbers separated by commas"),
])
def test_bad_ensembles_are_refused_in_one_line(runs, tmp_path, capsys, extra, message):
    args = ["--workdir", str(runs["a_s0"]), "--workdir", str(runs["a_s1"])]
    extra = [str(tmp_path / "o") if x == "OUT" else x for x in extra]
    assert _status(evaluate.main, args + extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_an_ensemble_of_different_tasks_or_one_run_twice_is_refused(runs, tmp_path, capsys):
    assert evaluate.main(["--workdir", str(runs["a_s0"]), "--workdir", str(runs["sst_only"]),
                          "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "an ensemble needs runs of the same tasks" in err and len(err.strip().splitlines()) == 1
    assert evaluate.main(["--workdir", str(runs["a_s0"]), "--workdir", str(runs["a_s0"]),
                          "--out", str(tmp_path / "o")]) == 2
    assert "a run given twice" in capsys.readouterr().err


def test_a_uniform_soup_is_the_mean_of_the_runs_and_a_normal_workdir(runs, tmp_path, capsys):
    a, b, out = runs["a_s0"], runs["a_s1"], tmp_path / "soup"
    assert soup.main(["--workdir", str(a), "--workdir", str(b), "--out", str(out), "--kind", "uniform",
                      "--batch-size", "16"]) == 0
    expected = mean_params([restore_trained(a)[1], restore_trained(b)[1]])
    _, got, _ = restore_trained(out)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, got, expected))
    summary = json.loads((out / "soup.json").read_text())
    assert summary["kind"] == "uniform" and all(m["in_soup"] for m in summary["members"])
    # evaluate.py scores it as soup.py did; convert exports it; compare lists it apart from its members.
    assert evaluate.main(["--workdir", str(out), "--batch-size", "16"]) == 0
    assert json.loads((out / "eval" / "metrics.json").read_text())["dev"]["overall"] == \
        pytest.approx(summary["dev_overall"], abs=1e-9)
    assert convert.main(["--checkpoint", str(out), "--out", str(tmp_path / "hf")]) == 0
    capsys.readouterr()
    # Parameters counted too: that path rebuilds each row's configuration, a soup's included.
    assert compare.main([str(a), str(b), str(out)]) == 0
    table = capsys.readouterr().out
    assert "(uniform soup)" in table and "2 (0, 1)" in table


def test_a_greedy_soup_never_scores_below_its_best_run(runs, tmp_path, capsys):
    out = tmp_path / "greedy"
    assert soup.main(["--workdir", str(runs["a_s0"]), "--workdir", str(runs["a_s1"]), "--out", str(out),
                      "--batch-size", "16"]) == 0
    summary = json.loads((out / "soup.json").read_text())
    best = max(m["dev_overall"] for m in summary["members"])
    assert summary["kind"] == "greedy" and summary["dev_overall"] >= best
    first = max(summary["members"], key=lambda m: m["dev_overall"])
    assert first["in_soup"]  # the best run always goes in first
    log = capsys.readouterr().out
    assert "greedy soup: with" in log and ("added" in log or "left out" in log)


def test_runs_that_do_not_match_are_refused_and_nothing_is_written(runs, tmp_path, capsys):
    out = tmp_path / "bad"
    assert soup.main(["--workdir", str(runs["a_s0"]), "--workdir", str(runs["pooler"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model.pooling is 'pooler'" in err and len(err.strip().splitlines()) == 1
    assert soup.main(["--workdir", str(runs["a_s0"]), "--workdir", str(runs["sst_only"]), "--out", str(out)]) == 2
    assert "model.tasks" in capsys.readouterr().err
    assert not out.exists() and not any(tmp_path.glob(".bad*"))
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert soup.main(["--workdir", str(runs["a_s0"]), "--workdir", str(runs["a_s1"]), "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err and (out / "mine.txt").read_text() == "keep"


def test_compare_puts_each_groups_ensemble_beside_its_mean(runs, tmp_path, capsys):
    a, b = runs["a_s0"], runs["a_s1"]
    assert compare.main([str(a), str(b), "--ensembles", "--no-parameters"]) == 0
    header, row = (re.split(r"\s{2,}", line) for line in capsys.readouterr().out.splitlines()[:2])
    shown = row[header.index("ensemble overall")]
    # The members' last dev evaluations are their latest checkpoints: the same ensemble, by evaluate.py.
    assert evaluate.main(["--workdir", str(a), "--workdir", str(b), "--checkpoint", "latest",
                          "--out", str(tmp_path / "ens"), "--batch-size", "16"]) == 0
    assert shown == f"{json.loads((tmp_path / 'ens' / 'metrics.json').read_text())['dev']['overall']:.3f}"
    assert list((a / "eval").glob("dev-outputs-step*.npz"))  # computed once, kept
