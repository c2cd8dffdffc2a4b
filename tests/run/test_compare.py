"""python -m mtbert_jax.run.compare: grouping by configuration without the seed, mean +- sd over
seeds, unfinished and unreadable runs named, parameters beyond the encoder."""

from __future__ import annotations

import json
import statistics

import pytest

from configs import default
from mtbert_jax.run import compare


def _run(root, name, seed=0, overall_by_epoch=(0.70, 0.74, 0.75), seconds=1800.0, **changes):
    config = default.get_config().to_dict() | {"seed": seed}
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            config[section] = {**config[section], field: value}
        else:
            config[key] = value
    workdir = root / name
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(config))
    records = [{"step": 10, "epoch": 1, "loss": {"sst": 1.0}, "run_seconds": 5.0}]
    for epoch, overall in enumerate(overall_by_epoch, 1):
        # sst and quora accuracy, sts r: the overall score is their mean with r mapped to (r + 1) / 2
        dev = {"sst": {"accuracy": overall - 0.25}, "quora": {"accuracy": overall + 0.1},
               "sts": {"pearson": 2 * (overall + 0.15) - 1, "spearman": 0.0}}
        records.append({"step": 100 * epoch, "epoch": epoch, "dev": dev, "dev_overall": overall,
                        "run_seconds": seconds * epoch / len(overall_by_epoch)})
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return workdir


def test_runs_group_by_configuration_with_mean_and_sd_over_seeds(tmp_path, capsys):
    for seed, last, seconds in ((0, 0.75, 1800.0), (1, 0.77, 2000.0), (2, 0.76, 2200.0)):
        _run(tmp_path, f"default_s{seed}", seed, (0.7, 0.72, last), seconds)
    _run(tmp_path, "pals_s0", 0, (0.7, 0.74, 0.78), model__adapter="pals")
    _run(tmp_path, "pals_s1", 1, (0.7, 0.74), model__adapter="pals")  # killed in epoch 3
    (tmp_path / "notes.txt").write_text("not a run")
    (tmp_path / "empty").mkdir()

    assert compare.main([str(tmp_path), str(tmp_path / "notes.txt"), "--markdown"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == ("| run | seeds | sst accuracy | quora accuracy | sts pearson | overall | training time "
                        "| params beyond encoder |")
    sd = statistics.stdev([0.75, 0.77, 0.76])  # 0.01
    assert lines[2] == (f"| default | 3 (0, 1, 2) | 0.510 ± {sd:.3f} | 0.860 ± {sd:.3f} | 0.820 ± {2 * sd:.3f} "
                        f"| 0.760 ± {sd:.3f} | 33m20s ± 3m20s | 2,695 |")
    # PALs: one finished seed; its second run is unfinished and not in the mean. Parameters: the
    # heads' 2,695 (SST 384 x 5 + 5, Quora and STS 384 + 1) plus, per task, the shared V^E and V^D
    # with biases and each of the 6 layers' query, key and value in d_s = 204.
    pals_parameters = 2695 + 3 * (2 * 384 * 204 + 384 + 204 + 6 * 3 * (204 * 204 + 204))
    pals = next(line for line in lines if line.startswith("| pals |"))
    assert f"| 1 seed (0) | 0.530 | 0.880 | 0.860 | 0.780 | 30m00s | {pals_parameters:,} |" in pals
    assert "pals: model.adapter=pals" in out and "default: default" in out
    assert f"unfinished: {tmp_path / 'pals_s1'} (seed 1): epoch 2 of 3, step 200; dev overall so far 0.7400" in out
    assert f"not read: {tmp_path / 'notes.txt'}: not a directory" in out
    # `empty` has no config.json: a directory of runs is expanded, an empty one is not a run.
    assert compare.find_runs([tmp_path / "empty"]) == [tmp_path / "empty"]


def test_a_bad_metrics_line_is_named_and_nothing_readable_exits_2(tmp_path, capsys):
    workdir = _run(tmp_path, "broken")
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    assert compare.main([str(workdir)]) == 2
    err = capsys.readouterr().err
    assert f"{workdir / 'metrics.jsonl'}:5: not JSON" in err and "error: no run could be read" in err


def test_the_same_seed_twice_is_flagged_and_timeless_runs_say_so(tmp_path):
    runs = [compare.read_run(_run(tmp_path, name, 0, seconds=s)) for name, s in (("a", 60.0), ("b", 120.0))]
    runs[1].seconds = None  # a run from before run_seconds was logged
    (row,) = compare.compare(runs, reference=None, count_parameters=False)
    assert row["seeds"] == "2 (0, 0), a seed twice"
    assert row["time"] == "1m00s (1 of 2 timed)"
    assert row["name"] == "a / b"


@pytest.mark.parametrize("names, expected", [(["pals_s0", "pals-seed12"], "pals"), (["x1", "x2"], "x")])
def test_group_names_drop_the_seed_suffix(tmp_path, names, expected):
    assert compare.group_name([tmp_path / n for n in names]) == expected


def test_an_averaged_run_also_counts_as_its_configuration_without_the_average(tmp_path, capsys):
    """A run with weight averaging adds a row for its unaveraged dev scores, and that row joins
    the genuine runs of the configuration without averaging (here seed 1)."""
    averaged = _run(tmp_path, "mean_ema_s0", 0, (0.70, 0.78), num_epochs=2, optimizer__ema_decay=0.999)
    records = [json.loads(x) for x in (averaged / "metrics.jsonl").read_text().splitlines()]
    for record, unaveraged in zip([r for r in records if "dev" in r], (0.69, 0.76)):
        record["dev_unaveraged"] = {t: {k: v - 0.02 for k, v in m.items()} for t, m in record["dev"].items()}
        record["dev_unaveraged_overall"] = unaveraged
    (averaged / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    _run(tmp_path, "mean_s1", 1, (0.70, 0.74), num_epochs=2)

    assert compare.main([str(tmp_path), "--no-parameters"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("  ")[0]: line for line in out.splitlines()[1:3]}
    assert set(rows) == {"mean_ema", "mean_ema_s0 (unaveraged) / mean_s1"}
    assert "1 seed (0)" in rows["mean_ema"] and "0.780" in rows["mean_ema"]
    mean = f"{statistics.mean([0.76, 0.74]):.3f} ± {statistics.stdev([0.76, 0.74]):.3f}"
    assert "2 (0, 1)" in rows["mean_ema_s0 (unaveraged) / mean_s1"] and mean in rows["mean_ema_s0 (unaveraged) / mean_s1"]
    assert "mean_ema: num_epochs=2, optimizer.ema_decay=0.999" in out
    assert compare.group_name([tmp_path / "mean_ema_s0 (unaveraged)", tmp_path / "mean_ema_s3 (unaveraged)"]) == \
        "mean_ema (unaveraged)"


def test_a_run_in_its_last_epoch_is_unfinished_and_one_stopped_early_is_finished(tmp_path):
    """Dev records every N steps carry the epoch they are in: the loop's `final` decides."""
    def with_dev(name, step, epoch, final, **flags):
        workdir = _run(tmp_path, name, overall_by_epoch=(0.7, 0.72))
        dev = {"sst": {"accuracy": 0.5}, "quora": {"accuracy": 0.8}, "sts": {"pearson": 0.8, "spearman": 0.0}}
        with open(workdir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "epoch": epoch, "dev": dev, "dev_overall": 0.73, "final": final,
                                **flags}) + "\n")
        return compare.read_run(workdir)

    assert not with_dev("mid_last_epoch", 250, 3, False).finished  # 3 epochs, dev at step 250 of 300
    assert with_dev("stopped", 250, 3, True, stopped_early=True).finished
    assert with_dev("ended", 300, 3, True).finished
    # A log from before dev records said so: its last epoch's record ends the run.
    assert compare.read_run(_run(tmp_path, "older")).finished
