"""Trackers: metrics records flattened to scalar tags; TensorBoard events read back as TensorBoard
shows them, a kill -9 and resume included (no step twice); W&B offline (its local run directory,
the same run resumed, nothing sent anywhere); a failing backend is one line and training goes on."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import types

import numpy as np
import pytest

from mtbert_jax.run import tensorboard_events
from mtbert_jax.run.metrics_log import LogWindow
from mtbert_jax.run.trackers import (
    CompositeTracker,
    TensorBoardTracker,
    WandbTracker,
    flatten_config,
    flatten_record,
    make_trackers,
    provenance,
)

TASKS = ("sst", "sts")


def train_record(step: int, loss: float = 1.0) -> dict:
    """A training window's record, as the loop makes it (LogWindow.record on a step's host metrics)."""
    window = LogWindow()
    window.add_step(64)
    window.add_losses({"sst": loss, "sts": loss + 1})
    window.add_losses({"sst": loss + 2, "sts": loss + 3})
    metrics = {"grad_norm": np.array([0.5, 1.5], np.float32), "lr/encoder": np.float32(2e-5),
               "lr/task": np.float32(1e-3), "param_norm": np.float32(40.0), "update_norm": np.float32(0.25),
               "pcgrad_conflicts": np.int32(1), "pcgrad_cosines": np.array([[1.0, -0.25], [-0.25, 1.0]], np.float32)}
    record = window.record(step, 1, metrics, 0.875)
    return record | {"step_seconds": 0.5, "tokens_per_second": 1000.0, "model_tflops": 0.01, "peak_host_mib": 512.0}


def dev_record(step: int, overall: float = 0.6) -> dict:
    """An epoch's dev record (Trainer.evaluate)."""
    return {"step": step, "epoch": 1, "dev": {"sst": {"accuracy": 0.5}, "sts": {"pearson": 0.8, "spearman": 0.7}},
            "dev_overall": overall, "final": False}


def test_records_flatten_to_scalar_tags():
    flat = flatten_record(train_record(10), TASKS)
    assert flat.pop("examples_per_second") > 0
    assert flat == pytest.approx({
        "epoch": 1.0, "loss/sst": 2.0, "loss/sts": 3.0, "grad_norm/sst": 0.5, "grad_norm/sts": 1.5,
        "lr/encoder": 2e-5, "lr/task": 1e-3, "param_norm": 40.0, "update_norm": 0.25, "padding_efficiency": 0.875,
        "pcgrad_conflicts": 1.0, "pcgrad_cosines/sst-sts": -0.25, "step_seconds": 0.5, "tokens_per_second": 1000.0,
        "model_tflops": 0.01, "peak_host_mib": 512.0})
    assert flatten_record(dev_record(10)) == {"epoch": 1.0, "dev/sst/accuracy": 0.5, "dev/sts/pearson": 0.8,
                                              "dev/sts/spearman": 0.7, "dev/overall": 0.6}
    # GSE's nested record, the unaveraged dev record; without task names, lists go by index.
    gse = {"step": 3, "gse": {"loss": {"sst": 1.0}, "grad_norm": [1.0, 2.0], "update_norm": 0.5},
           "dev_unaveraged": {"sst": {"accuracy": 0.4}}, "dev_unaveraged_overall": 0.4, "note": "text", "mfu": None}
    assert flatten_record(gse) == {"gse/loss/sst": 1.0, "gse/grad_norm/0": 1.0, "gse/grad_norm/1": 2.0,
                                   "gse/update_norm": 0.5, "dev_unaveraged/sst/accuracy": 0.4,
                                   "dev_unaveraged/overall": 0.4}


def test_config_flattens_to_dotted_names():
    assert flatten_config({"seed": 1, "model": {"tasks": ["sst"], "pooling": "mean"}, "x": None}) == {
        "seed": 1, "model.tasks": '["sst"]', "model.pooling": "mean", "x": None}


def test_tensorboard_events_read_back(tmp_path):
    logdir = tmp_path / "tensorboard"
    with TensorBoardTracker(logdir, tasks=TASKS, log=pytest.fail) as tracker:
        tracker.log_config({"seed": 3, "model": {"tasks": list(TASKS)}})
        tracker.log(train_record(10, loss=1.0), 10)
        tracker.log(dev_record(10), 10)  # the same step, other tags: both kept
        tracker.log(train_record(20, loss=0.5), 20)
    scalars = tensorboard_events.read_scalars(logdir)
    assert scalars["loss/sst"] == [(10, 2.0), (20, 1.5)]
    assert scalars["grad_norm/sts"] == [(10, 1.5), (20, 1.5)]
    assert scalars["lr/encoder"] == [(10, pytest.approx(2e-5)), (20, pytest.approx(2e-5))]
    assert scalars["dev/overall"] == [(10, pytest.approx(0.6))]
    assert scalars["dev/sts/pearson"] == [(10, pytest.approx(0.8))]
    assert {"padding_efficiency", "step_seconds", "tokens_per_second", "model_tflops", "examples_per_second",
            "param_norm", "update_norm", "pcgrad_cosines/sst-sts"} <= set(scalars)
    texts = tensorboard_events.read_values(logdir)
    [(step, config)] = texts["config/text_summary"]
    assert step == 0 and json.loads(config) == {"seed": 3, "model": {"tasks": ["sst", "sts"]}}
    [(_, written)] = texts["provenance/text_summary"]
    assert json.loads(written)["packages"]["jax"] == provenance()["packages"]["jax"]


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from test_trackers import train_record  # this file's folder is on PYTHONPATH
from mtbert_jax.run.trackers import TensorBoardTracker

tracker = TensorBoardTracker(Path(sys.argv[1]), tasks=("sst", "sts"))
for step in (10, 20, 30):  # the checkpoint is at step 20; step 30's record is logged, then kill -9
    tracker.log(train_record(step, loss=step / 100), step)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_run_killed_and_resumed_shows_each_step_once(tmp_path):
    logdir = tmp_path / "tensorboard"
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(logdir)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": os.path.dirname(__file__)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    resumed = TensorBoardTracker(logdir, resume_step=20, tasks=TASKS, log=pytest.fail)
    resumed.log(train_record(20, loss=9.0), 20)  # at the step resumed from: already written, dropped
    resumed.log(train_record(30, loss=0.7), 30)  # re-trained after the checkpoint: replaces the killed one's
    resumed.log(train_record(40, loss=0.8), 40)
    resumed.log(train_record(30, loss=5.0), 30)  # a step back: never written
    resumed.close()

    shown = tensorboard_events.read_scalars(logdir)["loss/sst"]  # a window's mean: loss + 1
    assert [step for step, _ in shown] == [10, 20, 30, 40]
    assert [value for _, value in shown] == pytest.approx([1.1, 1.2, 1.7, 1.8])
    # The files still hold the killed process's step 30 (TensorBoard hides it: the resumed file
    # starts with a SessionLog START at step 21); the resumed process wrote 30 and 40 only.
    raw = [(path, event.step) for path in tensorboard_events.event_files(logdir)
           for event in tensorboard_events.events(path) if event.HasField("summary")]
    assert len(tensorboard_events.event_files(logdir)) == 2
    assert [step for path, step in raw] == [10, 20, 30, 30, 40]
    assert {path for path, step in raw if step >= 30} != {path for path, step in raw if step <= 20}


def test_a_record_cut_short_by_a_kill_ends_the_readable_part(tmp_path):
    logdir = tmp_path / "tensorboard"
    with TensorBoardTracker(logdir) as tracker:
        tracker.log({"step": 1, "x": 1.0}, 1)
        tracker.log({"step": 2, "x": 2.0}, 2)
    [path] = tensorboard_events.event_files(logdir)
    path.write_bytes(path.read_bytes()[:-5])
    assert tensorboard_events.read_scalars(logdir) == {"x": [(1, 1.0)]}


def test_two_writers_within_a_second_keep_both_files(tmp_path):
    logdir = tmp_path / "tensorboard"
    for step in (1, 2):
        with TensorBoardTracker(logdir, resume_step=step - 1) as tracker:
            tracker.log({"step": step, "x": float(step)}, step)
    assert tensorboard_events.read_scalars(logdir) == {"x": [(1, 1.0), (2, 2.0)]}


def test_only_an_enabled_tracker_writes(tmp_path):
    tracker = make_trackers(tmp_path, 0, tensorboard=True, wandb="offline", enabled=False, log=pytest.fail)
    tracker.log_config({"seed": 0})
    tracker.log(train_record(1), 1)
    tracker.close()
    assert tracker.trackers == [] and list(tmp_path.iterdir()) == []
    assert make_trackers(tmp_path, 0, tensorboard=False).trackers == []
    with pytest.raises(Exception, match="wandb='on'"):
        make_trackers(tmp_path, 0, wandb="on")


def test_a_tensorboard_failure_is_one_line_and_training_goes_on(tmp_path):
    blocked = tmp_path / "tensorboard"
    blocked.write_text("a file where the directory should be")
    lines = []
    tracker = TensorBoardTracker(blocked, log=lines.append)
    tracker.log(train_record(1), 1)
    tracker.log_config({"seed": 0})
    tracker.close()
    assert len(lines) == 1 and lines[0].startswith("TensorBoard: opening the event file") and "goes on" in lines[0]


def _fake_wandb(monkeypatch, init):
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))


def test_a_wandb_failure_is_one_line_and_training_goes_on(tmp_path, monkeypatch):
    def refused(**kwargs):
        raise RuntimeError("api_key not configured (no-tty)\ncall wandb.login(key=[your_api_key])")

    lines = []
    _fake_wandb(monkeypatch, refused)
    tracker = WandbTracker(tmp_path, "online", log=lines.append)
    tracker.log(train_record(1), 1)
    tracker.close()
    assert lines == ["W&B: starting the run failed (RuntimeError: api_key not configured (no-tty)); "
                     "training goes on without W&B"]
    assert (tmp_path / "wandb_run_id").read_text().strip()  # kept: a later start continues this run

    logged = []

    class Run:
        starting_step = 0

        def log(self, data, step):
            logged.append(step)
            raise ConnectionError("the W&B service is gone")

        def finish(self):
            raise AssertionError("not reached: the tracker is off")

    lines.clear()
    _fake_wandb(monkeypatch, lambda **kwargs: Run())
    tracker = CompositeTracker([WandbTracker(tmp_path, "online", log=lines.append)])
    for step in (1, 2, 3):
        tracker.log(train_record(step), step)
    tracker.close()
    assert logged == [1] and lines == ["W&B: logging step 1 failed (ConnectionError: the W&B service is gone); "
                                       "training goes on without W&B"]


def test_wandb_not_installed_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    lines = []
    WandbTracker(tmp_path, "offline", log=lines.append).log(train_record(1), 1)
    assert len(lines) == 1 and "requirements-wandb.txt" in lines[0]


def test_wandb_resume_passes_the_run_id_and_skips_the_steps_the_run_has(tmp_path, monkeypatch):
    calls, logged = [], []

    class Run:
        starting_step = 31  # the killed process logged up to step 30

        def log(self, data, step):
            logged.append(step)

        def finish(self):
            pass

    _fake_wandb(monkeypatch, lambda **kwargs: calls.append(kwargs) or Run())
    (tmp_path / "wandb_run_id").write_text("abc123xy\n")
    tracker = WandbTracker(tmp_path, "online", project="p", name="n", resume_step=20, log=pytest.fail)
    for step in (30, 40, 40):
        tracker.log(train_record(step), step)
    tracker.log(dev_record(40), 40)  # the same step's dev record: new tags, the same W&B row
    tracker.close()
    assert calls == [{"project": "p", "name": "n", "id": "abc123xy", "resume": "allow", "mode": "online",
                      "dir": str(tmp_path)}]
    assert logged == [40, 40]


@pytest.fixture
def network_trap(monkeypatch, tmp_path):
    """Every address W&B could send to (its API, any HTTP proxy) is a local socket that counts
    the connections made to it; W&B's settings, cache and data directories are the test's."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.1)
    connections, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                connections.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    for name in ("WANDB_BASE_URL", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, url)
    for name in ("NO_PROXY", "no_proxy", "WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield connections
    stop.set()
    thread.join()
    server.close()


def test_wandb_offline_keeps_the_run_on_the_machine_and_resumes_it(tmp_path, network_trap):
    pytest.importorskip("wandb")
    workdir, lines = tmp_path / "run", []
    tracker = WandbTracker(workdir, "offline", project="mtbert-test", name="offline", tasks=TASKS, log=lines.append)
    tracker.log_config({"seed": 3, "model": {"tasks": list(TASKS)}})
    tracker.log(train_record(10), 10)
    tracker.log(dev_record(10, overall=0.625), 10)
    first = tracker.directory
    tracker.close()
    assert lines == []
    run_id = (workdir / "wandb_run_id").read_text().strip()
    assert first.parent == workdir / "wandb" and first.name.startswith("offline-run-") and first.name.endswith(run_id)
    history = (first / f"run-{run_id}.wandb").read_bytes()
    assert b"loss/sst" in history and b"dev/overall" in history and b"grad_norm/sts" in history
    info = provenance()
    assert info["packages"]["jax"].encode() in history
    if info["git_commit"]:
        assert info["git_commit"].encode() in history

    resumed = WandbTracker(workdir, "offline", project="mtbert-test", resume_step=10, log=lines.append)
    resumed.log(train_record(20), 20)
    second = resumed.directory
    resumed.close()
    assert lines == [] and second != first and (second / f"run-{run_id}.wandb").exists()  # the same W&B run
    assert network_trap == [], "an offline W&B run connected to the network"
