"""Watching a run: TensorBoard events read back, W&B offline, a profiler window that changes
nothing, step time and FLOP figures in the log, dev every N steps, early stopping, and the
summary line; each resumed exactly after kill -9."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_loop import ROOT, _assert_same_run, _final_params, _metrics, _train_command, _write_config

from conftest import COMMAND_ENV
from mtbert_jax.run import tensorboard_events

# kill -9 of train.py itself while its step $KILL_AT is in flight (no chance to clean up).
KILLED_AT_STEP = """
import os, runpy, signal, sys
import mtbert_jax.training.step as step

calls = []

def killed(*args, **kwargs):
    calls.append(1)
    if len(calls) == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

real, step.StepRunner.__call__ = step.StepRunner.__call__, killed
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _train(config: Path, workdir: Path, *flags: str, wrapper: Path | None = None, **env) -> subprocess.CompletedProcess:
    command = _train_command(config, workdir) + list(flags)
    if wrapper is not None:
        command = [sys.executable, str(wrapper), *command[1:]]
    return subprocess.run(command, cwd=ROOT, env={**COMMAND_ENV, **env}, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def watched(tiny_checkpoint, tiny_data_dir, tmp_path_factory):
    """A two-epoch tiny run with TensorBoard (the default), dev every 4 steps and a profile
    window of steps 3-4; and the same run with all of that off but dev every 4 steps."""
    root = tmp_path_factory.mktemp("watched")
    config = _write_config(root / "tiny.py", tiny_checkpoint, tiny_data_dir, root / "cache",
                           schedule__kind="all_tasks_until_largest", num_epochs=2, log_every_steps=2,
                           checkpoint_every_steps=100, eval_every_steps=4)
    on = _train(config, root / "on", "--config.profile_start_step=3", "--config.profile_num_steps=2")
    assert on.returncode == 0, on.stderr[-3000:]
    off = _train(config, root / "off", "--config.tensorboard=False")
    assert off.returncode == 0, off.stderr[-3000:]
    return {"config": config, "on": root / "on", "off": root / "off", "stdout": on.stdout}


def test_tensorboard_holds_every_metric_and_the_config(watched):
    scalars = tensorboard_events.read_scalars(watched["on"] / "tensorboard")
    logged = [r for r in _metrics(watched["on"]) if "loss" in r]
    for tag in ("loss/sst", "loss/quora", "loss/sts", "grad_norm/sst", "param_norm", "update_norm",
                "examples_per_second", "tokens_per_second", "padding_efficiency", "step_seconds", "model_tflops",
                "dev/sst/accuracy", "dev/quora/accuracy", "dev/sts/pearson", "dev/overall"):
        assert tag in scalars, (tag, sorted(scalars))
    assert any(tag.startswith("lr/") for tag in scalars)
    # The values are the log's, step by step.
    assert [s for s, _ in scalars["loss/sst"]] == [r["step"] for r in logged]
    assert np.allclose([v for _, v in scalars["loss/sst"]], [r["loss"]["sst"] for r in logged], rtol=1e-6)
    dev_steps = [r["step"] for r in _metrics(watched["on"]) if "dev" in r]
    assert [s for s, _ in scalars["dev/overall"]] == dev_steps
    texts = tensorboard_events.read_values(watched["on"] / "tensorboard")
    assert any("config" in tag for tag in texts), sorted(texts)
    assert not (watched["off"] / "tensorboard").exists()


def test_the_log_has_step_time_tokens_flops_and_peak_memory_but_no_mfu_on_a_cpu(watched):
    logged = [r for r in _metrics(watched["on"]) if "loss" in r]
    for record in logged:
        assert record["step_seconds"] > 0 and record["tokens_per_second"] > 0 and record["model_tflops"] > 0
        assert "mfu" not in record  # no datasheet peak for a CPU: no made-up figure
        assert "peak_device_mib" not in record  # a CPU backend reports no device memory
    peaks = [r["peak_host_mib"] for r in logged]
    assert peaks[0] > 100 and peaks == sorted(peaks)  # jax alone holds more; a high-water mark


def test_dev_every_n_steps_and_best_among_all_evaluations(watched):
    """12 steps in 2 epochs, dev every 4 steps: evaluations at 4, 6 (epoch end), 8 and 12; best/
    holds the step with the highest overall of all of them; the run ends with one summary line."""
    dev = [r for r in _metrics(watched["on"]) if "dev" in r]
    assert [r["step"] for r in dev] == [4, 6, 8, 12]
    assert [r["final"] for r in dev] == [False, False, False, True]  # the run ends with the last alone
    best = max(dev, key=lambda r: r["dev_overall"])
    assert sorted(int(p.name) for p in (watched["on"] / "best").glob("*") if p.name.isdigit()) == [best["step"]]
    last = watched["stdout"].strip().splitlines()[-1]
    assert last == (f"done: best/ holds step {best['step']} (dev overall {best['dev_overall']:.4f}); "
                    f"{last.split('; ')[1]}; next: python evaluate.py --workdir {watched['on']}")


def test_a_profile_window_writes_a_trace_and_changes_nothing(watched):
    traces = list((watched["on"] / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and list((watched["on"] / "profile").rglob("perfetto_trace.json.gz"))
    assert not (watched["off"] / "profile").exists()
    # Neither the trace nor the events change what the run computes.
    _assert_same_run(watched["on"], watched["off"])


def test_early_stopping_saves_says_so_exits_0_and_stays_stopped(watched, tmp_path):
    """Patience 1 with a minimum gain no run reaches: the second evaluation stops the run; it
    saved, says so in one line, exits 0; the same command again trains nothing more."""
    workdir = tmp_path / "early"
    flags = ("--config.early_stopping_patience=1", "--config.early_stopping_min_delta=1.0")
    first = _train(watched["config"], workdir, *flags)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "early stopping: 1 dev evaluation(s) without improving" in first.stdout
    dev = [r["step"] for r in _metrics(workdir) if "dev" in r]
    assert dev == [4, 6]
    last = [r for r in _metrics(workdir) if "dev" in r][-1]
    assert last["final"] and last["stopped_early"]  # compare.py counts it finished
    assert sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())[-1] == 6
    params = _final_params(workdir)
    again = _train(watched["config"], workdir, *flags)
    assert again.returncode == 0 and [r["step"] for r in _metrics(workdir) if "dev" in r] == dev
    for name, value in _final_params(workdir).items():
        np.testing.assert_array_equal(value, params[name])


def test_killed_between_two_evaluations_the_run_resumes_exactly(watched, tmp_path):
    """kill -9 during step 7 (after the evaluation at step 6, before the one at 8), early
    stopping on: the resumed run's log, TensorBoard events (no step twice), patience state and
    parameters are the uninterrupted run's."""
    flags = ("--config.early_stopping_patience=2", "--config.early_stopping_min_delta=0.001")
    whole = _train(watched["config"], tmp_path / "whole", *flags)
    assert whole.returncode == 0, whole.stderr[-3000:]
    wrapper = tmp_path / "killed.py"
    wrapper.write_text(KILLED_AT_STEP)
    killed = _train(watched["config"], tmp_path / "killed", *flags, wrapper=wrapper, KILL_AT="7")
    assert killed.returncode == -9
    resumed = _train(watched["config"], tmp_path / "killed", *flags)
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr[-3000:]
    _assert_same_run(tmp_path / "killed", tmp_path / "whole")
    ours = tensorboard_events.read_scalars(tmp_path / "killed" / "tensorboard")
    theirs = tensorboard_events.read_scalars(tmp_path / "whole" / "tensorboard")
    assert ours.keys() == theirs.keys()
    for tag in ("loss/sst", "dev/overall", "grad_norm/sts"):
        assert [s for s, _ in ours[tag]] == [s for s, _ in theirs[tag]], tag  # each step once
        assert np.allclose([v for _, v in ours[tag]], [v for _, v in theirs[tag]]), tag


def test_wandb_offline_keeps_one_run_across_a_resume(watched, tmp_path):
    pytest.importorskip("wandb")
    workdir = tmp_path / "wandb-run"
    env = {"WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true", "WANDB_CONSOLE": "off"}
    first = _train(watched["config"], workdir, "--config.wandb=offline", "--config.max_steps=4", **env)
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = (workdir / "wandb_run_id").read_text().strip()
    assert list(workdir.rglob(f"run-{run_id}.wandb"))
    longer = _train(watched["config"], workdir, "--config.wandb=offline", "--config.max_steps=8", **env)
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert (workdir / "wandb_run_id").read_text().strip() == run_id
    assert len({p.name for p in workdir.rglob("run-*.wandb")}) == 1


def test_bad_watching_settings_are_one_line(watched, tmp_path):
    for flag, expected in (("--config.wandb=sometimes", "wandb='sometimes'"),
                           ("--config.profile_num_steps=2", "profile_start_step=0"),
                           ("--config.eval_every_steps=-1", "eval_every_steps=-1")):
        result = _train(watched["config"], tmp_path / "w", flag)
        assert result.returncode == 2 and expected in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]
        assert not (tmp_path / "w").exists()
    assert json.loads((watched["on"] / "config.json").read_text())["tensorboard"] is True
