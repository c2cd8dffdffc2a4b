"""Training end to end on a tiny model: losses fall, checkpoints, exact resume, stop signals
(data parallel: test_data_parallel_runs.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import COMMAND_ENV, tiny_training_config
from mtbert_jax.checkpoints.tokenizer import BertTextTokenizer
from mtbert_jax.errors import ConfigError, TrainingError
from mtbert_jax.run.config import RunConfig
from mtbert_jax.run.loop import load_run_data, train_and_evaluate
from mtbert_jax.run.metrics_log import MEASURED_FIELDS

ROOT = Path(__file__).resolve().parents[2]


def _metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_end_to_end_with_pcgrad(tiny_checkpoint, tiny_data_dir, tmp_path):
    config = tiny_training_config(tiny_checkpoint, tiny_data_dir, tmp_path / "cache",
                                  schedule__kind="all_tasks_until_largest", optimizer__combiner="pcgrad", num_epochs=10)
    result = train_and_evaluate(config, tmp_path / "run")
    records = _metrics(tmp_path / "run")
    train = [r for r in records if "loss" in r]
    for task in ("sst", "quora", "sts"):
        first = np.mean([r["loss"][task] for r in train[:6]])
        last = np.mean([r["loss"][task] for r in train[-6:]])
        assert last < 0.8 * first, (task, first, last)
    assert all("pcgrad_conflicts" in r and len(r["pcgrad_cosines"]) == 3 for r in train)
    dev = [r for r in records if "dev" in r]
    assert len(dev) == 10 and set(dev[-1]["dev"]) == {"sst", "quora", "sts"}
    assert result["best_score"] == max(r["dev_overall"] for r in dev)
    run = tmp_path / "run"
    assert (run / "config.json").exists() and (run / "plots" / "training_curves.png").exists()
    assert (run / "plots" / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())[-1] == 60
    assert len([p for p in (run / "best").iterdir() if p.name.isdigit()]) == 1

    # The fine-tuned encoder exports to a Hugging Face directory that transformers loads.
    from mtbert_jax.checkpoints.hf import load_hf_checkpoint
    from mtbert_jax.model.encoder import BertModel
    from mtbert_jax.run import convert
    from mtbert_jax.run.checkpointing import restore_trained
    assert convert.main(["--checkpoint", str(run), "--out", str(tmp_path / "hf")]) == 0
    _, trained, _ = restore_trained(run, "best")
    bert_config, exported, _ = load_hf_checkpoint(tmp_path / "hf")
    ids = np.array([[101, 2204, 3185, 102]], np.int32)
    ours = BertModel(bert_config).apply({"params": trained["bert"]}, ids).pooled_output
    np.testing.assert_array_equal(ours, BertModel(bert_config).apply({"params": exported}, ids).pooled_output)


def test_two_stage_recipe_freezes_the_encoder(tiny_checkpoint, tiny_data_dir, tmp_path):
    """... and the weight average goes on into the frozen stage (it is what gets evaluated)."""
    config = tiny_training_config(tiny_checkpoint, tiny_data_dir, tmp_path / "cache",
                                  schedule__kind="round_robin", num_epochs=1, frozen_epochs=1,
                                  checkpoint_every_steps=1000, optimizer__ema_decay=0.9)
    train_and_evaluate(config, tmp_path / "run")
    manager = ocp.CheckpointManager((tmp_path / "run" / "checkpoints").resolve())
    steps = manager.all_steps()
    first, last = (manager.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
                   for s in (steps[0], steps[-1]))
    encoder = lambda s: np.asarray(s["train"]["params"]["bert"]["encoder"]["layer_0"]["output"]["dense"]["kernel"])  # noqa: E731
    head = lambda s: np.asarray(s["train"]["params"]["heads_sst"]["dense"]["kernel"])  # noqa: E731
    np.testing.assert_array_equal(encoder(first), encoder(last))  # stage 2: encoder frozen
    assert not np.array_equal(head(first), head(last))
    average_head = lambda s: np.asarray(s["train"]["average"]["heads_sst"]["dense"]["kernel"])  # noqa: E731
    assert not np.array_equal(average_head(first), average_head(last))  # still moving in stage 2
    assert not np.array_equal(average_head(last), head(last))


def test_pcgrad_with_a_one_task_schedule_is_a_clear_error(tiny_checkpoint, tiny_data_dir, tmp_path):
    config = tiny_training_config(tiny_checkpoint, tiny_data_dir, tmp_path, optimizer__combiner="pcgrad")
    with pytest.raises(ConfigError, match="needs a batch of every task in every step.*'sqrt'"):
        train_and_evaluate(config, tmp_path / "run")


def test_resuming_under_a_changed_model_is_refused_before_anything_is_written(tiny_checkpoint, tiny_data_dir, tmp_path):
    config = tiny_training_config(tiny_checkpoint, tiny_data_dir, tmp_path / "cache", num_epochs=1, max_steps=2,
                                  checkpoint_every_steps=1)
    train_and_evaluate(config, tmp_path / "run")
    saved = (tmp_path / "run" / "config.json").read_bytes()
    changed = tiny_training_config(tiny_checkpoint, tiny_data_dir, tmp_path / "cache", num_epochs=1, max_steps=2,
                                   checkpoint_every_steps=1, model__pooling="cls", seed=7, packing=False)
    with pytest.raises(ConfigError) as refused:
        train_and_evaluate(changed, tmp_path / "run")
    message = str(refused.value)
    assert "seed 0 -> 7" in message and "model.pooling 'mean' -> 'cls'" in message
    assert "packing True -> False" in message  # a packed pass orders records differently
    assert "--config.seed=0 --config.model.pooling=mean --config.packing=True" in message  # the way back
    assert len(message) < 400 and "\n" not in message
    assert (tmp_path / "run" / "config.json").read_bytes() == saved
    # What does not change the checkpoints' meaning may change: more epochs, another log interval.
    train_and_evaluate(tiny_training_config(tiny_checkpoint, tiny_data_dir, tmp_path / "cache", num_epochs=1,
                                            max_steps=3, checkpoint_every_steps=1, log_every_steps=2),
                      tmp_path / "run")


@pytest.mark.parametrize("field, value, message", [
    ("max_length", 1000, "max_length=1000 is more than the checkpoint's max_position_embeddings="),
    ("optimizer__encoder_lr", -1e-5, "optimizer.encoder_lr=-1e-05: expected a number >= 0"),
    ("optimizer__warmup_fraction", 1.5, "optimizer.warmup_fraction=1.5: expected a number in [0, 1]"),
    ("optimizer__ema_decay", 1.0, "optimizer.ema_decay=1.0: expected a number in [0, 1) (0: no average)"),
    ("compute_dtype", "float16", "compute_dtype='float16': expected one of ['auto', 'float32', 'bfloat16']"),
])
def test_bad_config_is_refused_before_the_workdir_is_touched(tiny_checkpoint, tiny_data_dir, tmp_path, field, value, message):
    config = tiny_training_config(tiny_checkpoint, tiny_data_dir, tmp_path / "cache", **{field: value})
    with pytest.raises(ConfigError, match=re.escape(message)):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_auto_dtype_is_chosen_once_and_kept_on_resume(tiny_checkpoint, tiny_data_dir, tmp_path, monkeypatch):
    from mtbert_jax.model import mixed_precision
    from mtbert_jax.run.loop import resolve_auto_dtype

    run = RunConfig.from_dict(tiny_training_config(tiny_checkpoint, tiny_data_dir, tmp_path / "cache",
                                                   compute_dtype="auto"))
    monkeypatch.setattr(mixed_precision, "fast_bfloat16", lambda: (True, "a test"))
    lines = []
    assert resolve_auto_dtype(run, tmp_path / "new", lines.append).compute_dtype == "bfloat16"
    assert lines == ["compute dtype: bfloat16 (auto: a test)"]
    # A run that started in float32 (on a machine without fast bf16) resumes in float32.
    (tmp_path / "old" / "checkpoints" / "40").mkdir(parents=True)
    (tmp_path / "old" / "config.json").write_text(json.dumps({"compute_dtype": "float32"}))
    assert resolve_auto_dtype(run, tmp_path / "old", lines.append).compute_dtype == "float32"
    assert lines[-1] == "compute dtype: float32 (auto: as the run started)"
    # An explicit dtype is left alone.
    fixed = RunConfig.from_dict(tiny_training_config(tiny_checkpoint, tiny_data_dir, tmp_path / "cache",
                                                     compute_dtype="float32"))
    assert resolve_auto_dtype(fixed, tmp_path / "new", lines.append) is fixed


def test_an_unknown_config_field_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "default.py"),
                             "--workdir", str(tmp_path / "run"), "--config.foo=1"], cwd=ROOT, capture_output=True,
                            text=True, env=COMMAND_ENV)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --config.foo: no config field 'foo' (see configs/default.py)"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_run_resumes_before_it(tiny_checkpoint, tiny_data_dir,
                                                                                tmp_path, capsys, damage):
    config = tiny_training_config(tiny_checkpoint, tiny_data_dir, tmp_path / "cache", num_epochs=1, max_steps=3,
                                  checkpoint_every_steps=1)
    train_and_evaluate(config, tmp_path / "whole")
    short = tiny_training_config(tiny_checkpoint, tiny_data_dir, tmp_path / "cache", num_epochs=1, max_steps=3,
                                 checkpoint_every_steps=1)
    train_and_evaluate(short, tmp_path / "run")
    # The latest checkpoint (step 3) loses its largest data file, or half of it.
    latest = tmp_path / "run" / "checkpoints" / "3"
    victim = max((p for p in latest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    else:
        victim.unlink()
    capsys.readouterr()
    train_and_evaluate(config, tmp_path / "run")  # resumes from step 2 and redoes step 3
    out = capsys.readouterr().out
    assert "checkpoint at step 3 is unreadable" in out and "resumed from" in out and "at step 2" in out
    aside = list((tmp_path / "run" / "checkpoints-unreadable").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("3-")
    whole, run = _final_params(tmp_path / "whole"), _final_params(tmp_path / "run")
    for name in whole:
        np.testing.assert_array_equal(whole[name], run[name], err_msg=name)


def test_nan_loss_stops_and_saves_nothing(tiny_checkpoint, tiny_data_dir, tmp_path):
    config = tiny_training_config(tiny_checkpoint, tiny_data_dir, tmp_path / "cache",
                                  schedule__kind="all_tasks_until_smallest")
    data = load_run_data(RunConfig.from_dict(config), BertTextTokenizer(tiny_checkpoint))
    data.train["sts"].labels = np.full_like(data.train["sts"].labels, np.nan)  # poisoned
    with pytest.raises(TrainingError, match=r"the sts loss is nan at step 1 \(epoch 1\)"):
        train_and_evaluate(config, tmp_path / "run", data=data)
    assert not [p for p in (tmp_path / "run" / "checkpoints").glob("*") if p.name.isdigit()]


def _write_config(path: Path, checkpoint, data_dir, cache, **changes) -> Path:
    """A config file for train.py holding the tiny configuration's values."""
    values = tiny_training_config(checkpoint, data_dir, cache, **changes).to_json()
    path.write_text("import json\n\nimport ml_collections\n\n\ndef get_config():\n"
                    f"    return ml_collections.ConfigDict(json.loads({values!r}))\n")
    return path


def _final_params(workdir: Path) -> dict:
    manager = ocp.CheckpointManager((workdir / "checkpoints").resolve())
    state = manager.restore(manager.latest_step(),
                            args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
    from flax import traverse_util
    kept = {k: state["train"][k] for k in ("params", "average") if state["train"].get(k) is not None}
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(kept, sep="/").items()}


def _logged(workdir: Path) -> list[dict]:
    """The metrics log without its wall-clock measurements (examples/s, run_seconds)."""
    return [{k: v for k, v in r.items() if k not in MEASURED_FIELDS} for r in _metrics(workdir)]


def _assert_same_run(workdir: Path, reference: Path) -> None:
    """Same metrics log (but wall-clock figures) and bit-identical final parameters."""
    assert _logged(workdir) == _logged(reference)
    ours, theirs = _final_params(workdir), _final_params(reference)
    assert ours.keys() == theirs.keys()
    for name in theirs:
        np.testing.assert_array_equal(theirs[name], ours[name], err_msg=name)


def _train_command(config: Path, workdir: Path):
    return [sys.executable, str(ROOT / "train.py"), "--config", str(config), "--workdir", str(workdir)]


@pytest.mark.parametrize("packing, ema", [(False, 0.0), (True, 0.9)], ids=["padded", "packed-weight-average"])
def test_killed_run_resumes_to_the_same_parameters(tiny_checkpoint, tiny_data_dir, tmp_path, packing, ema):
    config = _write_config(tmp_path / "tiny.py", tiny_checkpoint, tiny_data_dir, tmp_path / "cache",
                           schedule__kind="all_tasks_until_largest", optimizer__combiner="pcgrad", num_epochs=2,
                           checkpoint_every_steps=3, log_every_steps=2, packing=packing,
                           optimizer__ema_decay=ema)  # checkpoints between log records: the window is saved
    env = dict(os.environ)
    subprocess.run(_train_command(config, tmp_path / "whole"), check=True, env=env, cwd=ROOT,
                   capture_output=True)

    process = subprocess.Popen(_train_command(config, tmp_path / "killed"), env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not any(p.name.isdigit() for p in checkpoints.glob("*")):
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)  # mid-run, no chance to clean up
    process.wait()
    saved = sorted(int(p.name) for p in checkpoints.glob("*") if p.name.isdigit())
    assert saved and saved[-1] < 12, saved  # it really was interrupted
    resumed = subprocess.run(_train_command(config, tmp_path / "killed"), env=env, cwd=ROOT,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout

    # The same parameters (the average too, when kept) and the metrics log the uninterrupted
    # run's, padding efficiency included (only wall-clock figures may differ).
    _assert_same_run(tmp_path / "killed", tmp_path / "whole")
    assert any(k.startswith("average/") for k in _final_params(tmp_path / "whole")) == (ema > 0)
    steps = [r["step"] for r in _metrics(tmp_path / "killed") if "loss" in r]
    assert steps == sorted(set(steps))  # the metrics log has no duplicated steps after resuming
    efficiency = [r["padding_efficiency"] for r in _metrics(tmp_path / "whole") if "padding_efficiency" in r][-1]
    # short texts: rows of 32 hold several (measured: packed 0.80, padded 0.67)
    assert (efficiency > 0.75) if packing else (efficiency < 0.7)


KILLED_AT_EVALUATION = """
import os, runpy, signal, sys
import mtbert_jax.run.loop as loop

real, calls = loop.dataset_metrics, []

def dies(*args, **kwargs):  # kill -9 in the middle of the dev evaluation numbered $KILL_AT_EVALUATION
    calls.append(1)
    if len(calls) == int(os.environ["KILL_AT_EVALUATION"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

loop.dataset_metrics = dies
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_run_killed_during_its_final_evaluation_finishes_on_restart(tiny_checkpoint, tiny_data_dir, tmp_path):
    """Its last step (12) is a multiple of checkpoint_every_steps: killed while evaluating after
    it, the restart must still write the final dev record, best/ and the plots."""
    config = _write_config(tmp_path / "tiny.py", tiny_checkpoint, tiny_data_dir, tmp_path / "cache",
                           schedule__kind="all_tasks_until_largest", num_epochs=2, checkpoint_every_steps=3)
    workdir = tmp_path / "run"
    wrapper = tmp_path / "killed_at_evaluation.py"
    wrapper.write_text(KILLED_AT_EVALUATION)
    env = {**os.environ, "KILL_AT_EVALUATION": "2", "MTBERT_MALLOC_TUNABLES": "0"}  # no re-exec: keep the patch
    killed = subprocess.run([sys.executable, str(wrapper), *_train_command(config, workdir)[1:]], env=env,
                            cwd=ROOT, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert [r["epoch"] for r in _metrics(workdir) if "dev" in r] == [1]
    assert not (workdir / "plots").exists()

    restarted = subprocess.run(_train_command(config, workdir), env=dict(os.environ), cwd=ROOT,
                               capture_output=True, text=True)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    dev = [r for r in _metrics(workdir) if "dev" in r]
    assert [r["epoch"] for r in dev] == [1, 2] and dev[-1]["step"] == 12
    best = max(dev, key=lambda r: r["dev_overall"])
    assert sorted(int(p.name) for p in (workdir / "best").glob("*") if p.name.isdigit()) == [best["step"]]
    assert (workdir / "plots" / "training_curves.png").exists()
    evaluated = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--workdir", str(workdir)],
                               env=dict(os.environ), cwd=ROOT, capture_output=True, text=True)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    scores = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert scores["dev"]["overall"] == pytest.approx(best["dev_overall"], abs=1e-6)


def _to_earlier_names(config: dict) -> dict:
    """A saved config as runs wrote it before the all_tasks_* names: seed 001's "method3" and
    schedule.method3_carry_over."""
    schedule = dict(config["schedule"])
    schedule["kind"] = {"all_tasks_until_smallest": "method3"}.get(schedule["kind"], schedule["kind"])
    schedule["method3_carry_over"] = schedule.pop("carry_over_passes")
    return {**config, "schedule": schedule}


def test_a_run_saved_under_the_earlier_names_resumes_exactly_and_evaluates(tiny_checkpoint, tiny_data_dir, tmp_path):
    """A workdir whose config.json and checkpoints hold the earlier schedule names resumes, from
    a command line that still says "method3", to the dev records of a run that never stopped,
    and evaluate.py reads it."""
    import shutil

    from mtbert_jax.run.evaluate import evaluate_run

    config = tiny_training_config(tiny_checkpoint, tiny_data_dir, tmp_path / "cache", num_epochs=2,
                                  schedule__kind="all_tasks_until_smallest")
    train_and_evaluate(config, tmp_path / "full")
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "full", old)
    steps = sorted(int(p.name) for p in (old / "checkpoints").iterdir() if p.name.isdigit())
    for step in steps[1:]:  # back to the oldest checkpoint kept: the rest must be trained again
        shutil.rmtree(old / "checkpoints" / str(step))
    metas = [old / "config.json", *(old / "checkpoints").glob("*/meta/metadata"), *(old / "best").glob("*/meta/metadata")]
    for digest in old.rglob("digest.json"):  # earlier versions wrote none
        digest.unlink()
    for path in metas:
        saved = json.loads(path.read_text())
        if "config" in saved:
            saved["config"] = _to_earlier_names(saved["config"])
        else:
            saved = _to_earlier_names(saved)
        path.write_text(json.dumps(saved))
    assert '"method3_carry_over"' in (old / "config.json").read_text()

    config.schedule.kind = "method3"
    train_and_evaluate(config, old)
    def dev(workdir):  # wall time aside
        return [{k: v for k, v in r.items() if k != "run_seconds"} for r in _metrics(workdir) if "dev" in r]

    assert dev(old) == dev(tmp_path / "full") and len(dev(old)) == 2
    assert [r["loss"] for r in _metrics(old) if "loss" in r] == [r["loss"] for r in _metrics(tmp_path / "full")
                                                                  if "loss" in r]
    results = evaluate_run(old, "best", ("dev",), {}, tmp_path / "eval", 16)
    assert results["dev"]["overall"] == pytest.approx(max(r["dev_overall"] for r in dev(old)))


KILLED_AFTER_SAVE = """
import os, runpy, signal, sys
import orbax.checkpoint as ocp

real, calls = ocp.CheckpointManager.save, []

def dies(self, *args, **kwargs):  # kill -9 once save number $KILL_AFTER_SAVE of this process is committed
    saved = real(self, *args, **kwargs)
    calls.append(1)
    if len(calls) == int(os.environ["KILL_AFTER_SAVE"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return saved

ocp.CheckpointManager.save = dies
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _whole_run_and_wrapper(tmp_path, tiny_checkpoint, tiny_data_dir, wrapper_text: str, **changes):
    """The two-epoch tiny recipe's config, its uninterrupted run in tmp_path/whole, the environment
    that keeps a wrapper's patches (no malloc re-exec) and the wrapper script around train.py."""
    config = _write_config(tmp_path / "tiny.py", tiny_checkpoint, tiny_data_dir, tmp_path / "cache",
                           schedule__kind="all_tasks_until_largest", num_epochs=2, **changes)
    env = COMMAND_ENV
    subprocess.run(_train_command(config, tmp_path / "whole"), check=True, env=env, cwd=ROOT, capture_output=True)
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(wrapper_text)
    return config, env, wrapper


def test_a_run_killed_after_every_save_ends_as_one_never_killed(tiny_checkpoint, tiny_data_dir, tmp_path):
    """Each start is killed right after its first committed save (best/ or checkpoints/, at an
    epoch's end or mid-epoch), until one finishes: its parameters, metrics log and best/ are
    those of the run that was never killed."""
    config, env, wrapper = _whole_run_and_wrapper(tmp_path, tiny_checkpoint, tiny_data_dir, KILLED_AFTER_SAVE,
                                                  checkpoint_every_steps=4)
    workdir, kills = tmp_path / "killed", 0
    for _ in range(12):
        result = subprocess.run([sys.executable, str(wrapper), *_train_command(config, workdir)[1:]],
                                env={**env, "KILL_AFTER_SAVE": "1"}, cwd=ROOT, capture_output=True, text=True)
        if result.returncode == 0:
            break
        assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
        kills += 1
    assert result.returncode == 0 and kills >= 4, (kills, result.stderr[-3000:])

    _assert_same_run(workdir, tmp_path / "whole")
    best = lambda w: sorted(int(p.name) for p in (w / "best").glob("*") if p.name.isdigit())  # noqa: E731
    assert best(workdir) == best(tmp_path / "whole") == [max((r for r in _metrics(workdir) if "dev" in r),
                                                             key=lambda r: r["dev_overall"])["step"]]


def test_a_restart_repairs_a_best_checkpoint_that_was_never_saved(tiny_checkpoint, tiny_data_dir, tmp_path):
    """A workdir whose best/ lacks its best epoch (saved in the other order and killed between
    the two saves): the restart copies that epoch from checkpoints/, says so, and evaluate.py
    scores it."""
    import shutil

    config = _write_config(tmp_path / "tiny.py", tiny_checkpoint, tiny_data_dir, tmp_path / "cache",
                           schedule__kind="all_tasks_until_largest", num_epochs=2, checkpoint_every_steps=4)
    workdir = tmp_path / "run"
    subprocess.run(_train_command(config, workdir), check=True, env=dict(os.environ), cwd=ROOT, capture_output=True)
    dev = [r for r in _metrics(workdir) if "dev" in r]
    best_step = max(dev, key=lambda r: r["dev_overall"])["step"]
    shutil.rmtree(workdir / "best")
    restarted = subprocess.run(_train_command(config, workdir), env=dict(os.environ), cwd=ROOT,
                               capture_output=True, text=True)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert f"best/ repaired: step {best_step}" in restarted.stdout
    assert sorted(int(p.name) for p in (workdir / "best").glob("*") if p.name.isdigit()) == [best_step]
    from mtbert_jax.run.evaluate import evaluate_run
    results = evaluate_run(workdir, "best", ("dev",), {}, tmp_path / "eval", 16)
    assert results["step"] == best_step
    assert results["dev"]["overall"] == pytest.approx(max(r["dev_overall"] for r in dev), abs=1e-6)


SIGNALLED = """
import os, runpy, signal, sys
import mtbert_jax.run.checkpointing as checkpointing
import mtbert_jax.run.loop as loop
import mtbert_jax.training.step as step

when, at = os.environ["SIGNAL_WHEN"], int(os.environ["SIGNAL_AT"])
sig = getattr(signal, os.environ["SIGNAL_NAME"])
calls = {"step": 0, "evaluation": 0}

def counted(name, real):
    def wrapper(*args, **kwargs):
        calls[name] += 1
        if when == name and calls[name] == at:
            os.kill(os.getpid(), sig)  # arrives while this step / evaluation is in flight
        return real(*args, **kwargs)
    return wrapper

step.StepRunner.__call__ = counted("step", step.StepRunner.__call__)
loop.dataset_metrics = counted("evaluation", loop.dataset_metrics)
real_save = checkpointing.Checkpoints.save

def save_signalled_again(self, *args, **kwargs):  # a second signal in the middle of the save
    if os.environ.get("SIGNAL_AGAIN", "1") == "1":
        os.kill(os.getpid(), sig)
    return real_save(self, *args, **kwargs)

checkpointing.Checkpoints.save = save_signalled_again
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("when, at, name, again", [("step", 5, "SIGTERM", "1"), ("evaluation", 1, "SIGUSR1", "1"),
                                                   ("step", 4, "SIGINT", "0")],
                         ids=["sigterm-mid-epoch", "sigusr1-while-evaluating", "ctrl-c-mid-epoch"])
def test_a_signalled_run_saves_stops_and_resumes_as_one_never_stopped(tiny_checkpoint, tiny_data_dir, tmp_path,
                                                                       when, at, name, again):
    """SIGTERM mid-epoch, SIGUSR1 during a dev evaluation, or Ctrl-C: the step or evaluation in
    flight finishes, a checkpoint is saved (a second SIGTERM during the save changes nothing),
    one line says so, the exit status is 75 (Ctrl-C: 130); the same command then ends as a run
    never stopped."""
    config, env, wrapper = _whole_run_and_wrapper(tmp_path, tiny_checkpoint, tiny_data_dir, SIGNALLED,
                                                  checkpoint_every_steps=100)
    workdir = tmp_path / "stopped"
    stopped = subprocess.run([sys.executable, str(wrapper), *_train_command(config, workdir)[1:]], cwd=ROOT,
                             env={**env, "SIGNAL_WHEN": when, "SIGNAL_AT": str(at), "SIGNAL_NAME": name,
                                  "SIGNAL_AGAIN": again},
                             capture_output=True, text=True)
    assert stopped.returncode == (130 if name == "SIGINT" else 75), stopped.stdout[-2000:] + stopped.stderr[-2000:]
    expected_step = at if when == "step" else 6  # the step in flight; or the epoch evaluated (6 steps)
    assert f"stopped by {name} after step {expected_step}: checkpoint saved" in stopped.stdout
    assert "Traceback" not in stopped.stderr
    assert sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()) == [expected_step]

    resumed = subprocess.run(_train_command(config, workdir), env=env, cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0 and f"at step {expected_step}" in resumed.stdout, resumed.stderr[-3000:]

    _assert_same_run(workdir, tmp_path / "whole")


def test_a_second_ctrl_c_ends_at_once_in_one_line_and_the_run_resumes(tiny_checkpoint, tiny_data_dir, tmp_path):
    """Ctrl-C twice (the second while the first's checkpoint is being saved): the process ends
    at once, one line, status 130, the workdir's lock released; the same command resumes from
    the newest intact checkpoint and ends as a run never stopped."""
    config, env, wrapper = _whole_run_and_wrapper(tmp_path, tiny_checkpoint, tiny_data_dir, SIGNALLED,
                                                  checkpoint_every_steps=3)
    workdir = tmp_path / "stopped"
    stopped = subprocess.run([sys.executable, str(wrapper), *_train_command(config, workdir)[1:]], cwd=ROOT,
                             env={**env, "SIGNAL_WHEN": "step", "SIGNAL_AT": "5", "SIGNAL_NAME": "SIGINT"},
                             capture_output=True, text=True)
    assert stopped.returncode == 130, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1].startswith("error: SIGINT again: stopped at once")
    assert not (workdir / ".lock").exists()
    resumed = subprocess.run(_train_command(config, workdir), env=env, cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(workdir, tmp_path / "whole")
