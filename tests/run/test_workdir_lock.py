"""One run per workdir: a live holder refuses a second run by name; a dead one's lock is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from mtbert_jax.run.workdir_lock import LOCK_NAME, WorkdirBusy, WorkdirLock


def _write_lock(workdir, host, pid):
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / LOCK_NAME).write_text(json.dumps({"host": host, "pid": pid, "since": "2026-11-24 10:00:00"}))


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    with WorkdirLock(tmp_path / "run"):
        holder = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(WorkdirBusy, match=rf"in use by another run \(host {socket.gethostname()}, pid {os.getpid()},"):
            with WorkdirLock(tmp_path / "run"):
                pass
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # released
    with WorkdirLock(tmp_path / "run"):  # and free again
        pass


def test_a_killed_runs_lock_is_stale_and_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    _write_lock(tmp_path / "run", socket.gethostname(), dead.pid)
    said = []
    with WorkdirLock(tmp_path / "run", log=said.append):
        assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert said and f"pid {dead.pid}, which is gone" in said[0]


def test_a_live_run_or_another_hosts_lock_is_respected(tmp_path):
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path / "a", socket.gethostname(), alive.pid)
        with pytest.raises(WorkdirBusy, match=f"pid {alive.pid}"):
            with WorkdirLock(tmp_path / "a"):
                pass
    finally:
        alive.kill()
    _write_lock(tmp_path / "b", "some-other-host", 1)  # cannot be checked from here
    with pytest.raises(WorkdirBusy, match=r"host some-other-host, pid 1, .*delete .*\.lock if that run is gone"):
        with WorkdirLock(tmp_path / "b"):
            pass


def test_processes_other_than_the_first_hold_nothing(tmp_path):
    with WorkdirLock(tmp_path / "run"):
        with WorkdirLock(tmp_path / "run", enabled=False):  # process 1 of a multi-process run
            pass
        assert (tmp_path / "run" / LOCK_NAME).exists()


def test_train_py_refuses_a_busy_workdir_in_one_line(tiny_checkpoint, tiny_data_dir, tmp_path):
    from conftest import tiny_training_config
    from mtbert_jax.run.loop import train_and_evaluate
    config = tiny_training_config(tiny_checkpoint, tiny_data_dir, tmp_path / "cache", num_epochs=1, max_steps=1)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path / "run", socket.gethostname(), alive.pid)
        with pytest.raises(WorkdirBusy):
            train_and_evaluate(config, tmp_path / "run")
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK_NAME]  # nothing written
    finally:
        alive.kill()
