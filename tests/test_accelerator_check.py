"""benchmarks/accelerator_check.py: --quick runs every part and reports each in a JSON line; a
failing part is reported, the parts after it still run and the exit status says so; the
recipe's wall-time split on hand-made output; the float16 checkpoint copy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import accelerator_check, float16_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def run_check(*args: str) -> tuple[int, dict, subprocess.CompletedProcess]:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accelerator_check.py"), *args],
                         capture_output=True, text=True, cwd=ROOT, timeout=900)
    parts = {}
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            parts[result["part"]] = result
    return out.returncode, parts, out


def test_quick_check_runs_every_part_and_reports_it(tmp_path, data_dir):
    eval_file = tmp_path / "sts-dev-head.csv"
    with open(data_dir / "sts-dev.csv", encoding="utf-8") as f:
        eval_file.write_text("".join(line for _, line in zip(range(21), f)), encoding="utf-8")
    summary = tmp_path / "check.md"
    returncode, parts, out = run_check("--quick", "--data-dir", str(data_dir), "--eval-file", f"dev:sts={eval_file}",
                                       "--out", str(summary))

    assert returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert list(parts) == list(accelerator_check.PARTS)
    assert {p: r["status"] for p, r in parts.items()} == dict.fromkeys(accelerator_check.PARTS, "ok")
    assert all(r["part_seconds"] > 0 for r in parts.values())

    device = parts["device"]
    assert device["device_count"] >= 1 and device["jax_platform"] == "cpu"
    assert all(device["versions"][d] for d in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers"))

    recipe = parts["default_recipe"]
    assert recipe["steps"] == 9 and recipe["epochs"] == 1 and recipe["best_step"] == 9
    assert set(recipe["dev"]) == {"sst", "quora", "sts"} and 0 <= recipe["dev_overall"] <= 1
    seconds = recipe["seconds"]
    assert all(seconds[k] > 0 for k in ("load", "train", "dev_evaluation", "evaluate_py", "train_py_total"))
    parts_of_train_py = sum(seconds[k] for k in ("load", "compile", "train", "dev_evaluation", "save_and_exit"))
    assert parts_of_train_py == pytest.approx(seconds["train_py_total"], abs=0.05)
    assert set(recipe["derivation"]) >= {"load", "compile", "train", "dev_evaluation", "evaluate"}
    assert recipe["steady_step_ms"] > 0
    # evaluate.py on best/ recomputes the dev record of the epoch best/ holds.
    assert recipe["evaluate_py_vs_training_dev_max_difference"] < 1e-4
    assert recipe["predictions"] == ["para-dev-output.csv", "sst-dev-output.csv", "sts-dev-output.csv"]
    assert -1 <= recipe["eval_files"][f"dev:sts={eval_file}"]["pearson"] <= 1

    (row,) = parts["train_step"]["results"]
    assert (row["dtype"], row["batch"]) == ("bfloat16", 4)
    assert row["ours_examples_per_second"] > 0 and row["ours_over_torch"] > 0
    assert row["ours_fraction_of_peak"] is None and parts["train_step"]["peak_note"] == "unknown: a CPU"

    assert parts["host_overhead"]["main_thread_cpu_ms_per_step"] > 0
    inference = parts["inference"]
    assert inference["examples"] == 3 * accelerator_check.QUICK_DEV_RECORDS
    assert len(inference["results"]) == 6 and inference["ratio_vs_sorted"] > 0

    table = summary.read_text()
    assert table in out.stdout
    assert all(f"| {part} | ok |" in table for part in accelerator_check.PARTS)


def test_a_failing_part_is_reported_and_the_next_parts_still_run(tmp_path, data_dir):
    missing = tmp_path / "no-such-checkpoint"
    returncode, parts, out = run_check("--quick", "--data-dir", str(data_dir), "--checkpoint", str(missing),
                                       "--parts", "default_recipe", "device")

    assert returncode == 1
    assert parts["default_recipe"]["status"] == "error"
    assert str(missing) in parts["default_recipe"]["error"]
    assert parts["device"]["status"] == "ok"
    assert "| default_recipe | error |" in out.stdout


def _timed_lines(*entries):
    return [(float(t), line) for t, line in entries]


def test_the_recipe_split_from_hand_made_output():
    # run_seconds + 2 = the check's clock (the first dev line arrives at 37 for a record at 35).
    def train(step, run_seconds, epoch):
        return {"step": step, "epoch": epoch, "loss": {"sst": 1.0}, "examples_per_second": 100.0,
                "run_seconds": run_seconds}

    records = [train(4, 20, 1), train(8, 24, 1), train(12, 28, 1),
               {"step": 14, "epoch": 1, "dev": {}, "dev_overall": 0.5, "run_seconds": 35},
               train(16, 40, 2), train(20, 46, 2), train(24, 50, 2),
               {"step": 24, "epoch": 2, "dev": {}, "dev_overall": 0.6, "run_seconds": 53}]
    lines = _timed_lines((1, "compute dtype: float32 (as configured)"),
                         (10, "3 tasks, 24 steps in 2 epochs, 1 device(s)"),
                         (37, "epoch 1: dev sst 0.4000, quora 0.6000, sts 0.1000; overall 0.5000"),
                         (55, "epoch 2: dev sst 0.5000, quora 0.7000, sts 0.2000; overall 0.6000"),
                         (55, "epoch 2: dev without the weight average sst 0.5000; overall 0.6000"))
    seconds, derivation, rates = accelerator_check.split_train_wall_time(lines, records, total=58)

    # Windows within an epoch, after its first: 1, 1 (epoch 1), 1.5, 1 (epoch 2) s per step: median 1.
    assert rates["steady_step_ms"] == 1000
    assert seconds["load"] == 10
    assert seconds["compile"] == 12 - 4 * 1  # the first window, 4 steps in 12 s
    assert seconds["dev_evaluation_each"] == [37 - 30 - 2 * 1, 55 - 52]
    assert seconds["dev_evaluation"] == 8
    assert seconds["train"] == 55 - 10 - 8 - 8
    assert seconds["save_and_exit"] == 3
    assert "steady" in derivation["compile"]

    with pytest.raises(ValueError, match="device"):
        accelerator_check.split_train_wall_time(lines[2:], records, total=58)


def test_float16_copy_loads_as_the_original_rounded_and_is_about_half(tmp_path, tiny_checkpoint):
    from flax import traverse_util

    from mtbert_jax.checkpoints.hf import load_hf_checkpoint

    sizes = float16_checkpoint.write_float16_copy(tiny_checkpoint, tmp_path / "f16")
    weights = (tiny_checkpoint / "model.safetensors").stat().st_size
    assert (tmp_path / "f16" / "model.safetensors").stat().st_size == pytest.approx(weights / 2, rel=0.01)
    assert sizes["copy_bytes"] < sizes["source_bytes"]
    assert all((tmp_path / "f16" / name).is_file() for name in ("config.json", "vocab.txt"))

    _, original, _ = load_hf_checkpoint(tiny_checkpoint)
    config, copy, _ = load_hf_checkpoint(tmp_path / "f16")
    original, copy = traverse_util.flatten_dict(original), traverse_util.flatten_dict(copy)
    assert copy.keys() == original.keys()
    for name, value in copy.items():
        assert value.dtype == np.float32, name  # the loader upcasts
        np.testing.assert_array_equal(value, original[name].astype(np.float16).astype(np.float32), err_msg=str(name))
    assert not all(np.array_equal(copy[k], original[k]) for k in copy)  # rounding changed something
