"""train.py as two processes of one jax.distributed job on this host (CPU, gloo collectives):
it trains as one process on two devices does; a signal to one process stops both after the
same step, saved, and the same command resumes as a run never stopped; a damaged checkpoint
stops both, named."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_loop import ROOT, _assert_same_run, _train_command, _write_config

TIMEOUT = 300  # seconds for all processes of one command together (a run here: 20-60 s)

# Process 1 (not the coordinator) signals itself while its step number $SIGNAL_AT is in flight.
SIGNALLED = """
import os, runpy, signal, sys
import mtbert_jax.training.step as step

calls = []

def signalled(*args, **kwargs):
    calls.append(1)
    if os.environ["JAX_PROCESS_ID"] == "1" and len(calls) == int(os.environ["SIGNAL_AT"]):
        os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)

real, step.StepRunner.__call__ = step.StepRunner.__call__, signalled
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


# Process 1 dies at once (kill -9, no chance to say anything) while its step $KILL_AT is in flight.
KILLED = SIGNALLED.replace("signal.SIGTERM", "signal.SIGKILL").replace("SIGNAL_AT", "KILL_AT")


def _free_port() -> int:
    with socket.socket() as s:  # a free port on the loopback interface
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(command: list[str], logs: Path, processes: int = 2, **env) -> list[tuple[int, str]]:
    """`command` as processes 0..processes-1 of one job (the same command on every host);
    [(exit status, output)] per process. None is left running, whatever happens."""
    # The CPU on any machine (an accelerator would be shared by the processes); no re-exec, which
    # would drop a wrapper's patch.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MTBERT_MALLOC_TUNABLES": "0", **env}
    cluster = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}", "JAX_NUM_PROCESSES": str(processes)}
    logs.mkdir(parents=True)
    running = []
    try:
        for i in range(processes):
            rank = {**cluster, "JAX_PROCESS_ID": str(i)} if processes > 1 else {}
            with open(logs / f"{i}.log", "w") as out:  # a file, not a pipe: a full pipe blocks no one
                running.append(subprocess.Popen(command, cwd=ROOT, env={**env, **rank}, stdout=out,
                                                stderr=subprocess.STDOUT))
        deadline = time.monotonic() + TIMEOUT
        for p in running:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in running:  # one left waiting at a collective for a peer that failed
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(p.returncode, (logs / f"{i}.log").read_text()) for i, p in enumerate(running)]


def _saved_steps(workdir: Path, folder: str = "checkpoints") -> list[int]:
    return sorted(int(p.name) for p in (workdir / folder).glob("*") if p.name.isdigit())


@pytest.fixture(scope="module")
def two_process_run(tiny_checkpoint, tiny_data_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(the config file, the workdir of a two-process run never stopped): 2 epochs of 6 steps,
    so that the processes' agreement at step 10 (preemption.SYNC_EVERY) falls mid-epoch."""
    root = tmp_path_factory.mktemp("two_processes")
    config = _write_config(root / "tiny.py", tiny_checkpoint, tiny_data_dir, root / "cache",
                           schedule__kind="all_tasks_until_largest", num_epochs=2, checkpoint_every_steps=100)
    for status, output in _run(_train_command(config, root / "whole"), root / "whole-logs"):
        assert status == 0, output[-4000:]
    return config, root / "whole"


def test_two_processes_train_as_one_process_on_two_devices(two_process_run, tmp_path):
    """The global batch is split over two devices either way (each half packed on its own), and
    a sum of two numbers has one order: the same metrics log and parameters to the bit. (One
    device would pack the batch whole, other rows: the same run only to about 1e-5.)"""
    config, whole = two_process_run
    [(status, output)] = _run(_train_command(config, tmp_path / "one"), tmp_path / "logs", processes=1,
                              JAX_NUM_CPU_DEVICES="2")
    assert status == 0, output[-4000:]
    assert "12 steps in 2 epochs, 2 device(s)" in output
    _assert_same_run(tmp_path / "one", whole)
    assert (whole / "best").is_dir() and (whole / "plots" / "training_curves.png").exists()


def test_a_signal_to_one_process_stops_both_after_the_same_step(two_process_run, tmp_path):
    """SIGTERM to process 1 alone during step 8: both processes finish steps up to their next
    agreement (step 10), save one checkpoint together, say so and exit 75; the same command
    then resumes on both and ends as the run never stopped. (best/ is removed before the
    resume: its repair, a collective save, must then run on both processes too.)"""
    config, whole = two_process_run
    wrapper = tmp_path / "signalled.py"
    wrapper.write_text(SIGNALLED)
    workdir = tmp_path / "stopped"
    stopped = _run([sys.executable, str(wrapper), *_train_command(config, workdir)[1:]], tmp_path / "stopped-logs",
                   SIGNAL_AT="8")
    for status, output in stopped:
        assert status == 75, output[-4000:]
        assert "stopped by SIGTERM after step 10: checkpoint saved" in output
        assert "Traceback" not in output
    assert _saved_steps(workdir) == [6, 10]  # the first epoch's end, and the stop

    shutil.rmtree(workdir / "best")
    resumed = _run(_train_command(config, workdir), tmp_path / "resumed-logs")
    for status, output in resumed:
        assert status == 0, output[-4000:]
    assert "at step 10" in resumed[0][1] and "best/ repaired: step 6" in resumed[0][1]  # process 0 says so
    _assert_same_run(workdir, whole)
    assert _saved_steps(workdir, "best") == _saved_steps(whole, "best") == [12]


def test_a_damaged_checkpoint_stops_every_process_naming_it(two_process_run, tmp_path):
    """A changed byte that still reads (the saved stage 0 made 1): caught by the digest on both
    processes, which exit 2 naming the file; the checkpoint stays where it is."""
    config, whole = two_process_run
    workdir = tmp_path / "damaged"
    shutil.copytree(whole, workdir)
    damaged = workdir / "checkpoints" / "12" / "meta" / "metadata"
    damaged.write_text(damaged.read_text().replace('"stage": 0', '"stage": 1'))
    for status, output in _run(_train_command(config, workdir), tmp_path / "logs"):
        assert status == 2, output[-4000:]
        assert f"{damaged} changed since it was saved" in output
    assert _saved_steps(workdir) == [6, 12]


def test_a_peer_killed_mid_run_ends_the_others_in_one_line_and_the_job_resumes(two_process_run, tmp_path):
    """kill -9 of process 1 during step 8: process 0 ends within the peer timeout (here 20 s)
    with one line naming process 1 and status 69, the workdir's lock released; the same
    command on both processes resumes from the last checkpoint and ends as the run never stopped."""
    config, whole = two_process_run
    wrapper = tmp_path / "killed.py"
    wrapper.write_text(KILLED)
    workdir = tmp_path / "killed"
    started = time.monotonic()
    (status0, output0), (status1, _) = _run([sys.executable, str(wrapper), *_train_command(config, workdir)[1:]],
                                            tmp_path / "killed-logs", KILL_AT="8", MTBERT_PEER_TIMEOUT="20")
    assert status1 == -signal.SIGKILL
    assert status0 == 69, output0[-4000:]
    assert "Traceback" not in output0 and time.monotonic() - started < TIMEOUT
    last = output0.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("error: process 0: process 1 stopped") and "resume" in last, output0[-2000:]
    assert not (workdir / ".lock").exists()
    assert _saved_steps(workdir) == [6]

    for status, output in _run(_train_command(config, workdir), tmp_path / "resumed-logs"):
        assert status == 0, output[-4000:]
    _assert_same_run(workdir, whole)


def test_a_peer_that_never_comes_ends_the_job_in_one_line(two_process_run, tmp_path):
    """Only process 0 of two starts: it ends after the join timeout (here 15 s) with one line
    naming itself and the coordinator, status 69, and leaves the workdir as it was."""
    config, _ = two_process_run
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MTBERT_MALLOC_TUNABLES": "0", "MTBERT_JOIN_TIMEOUT": "15",
           "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}
    started = time.monotonic()
    alone = subprocess.run(_train_command(config, tmp_path / "alone"), cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=TIMEOUT)
    assert alone.returncode == 69, alone.stderr[-3000:]
    assert time.monotonic() - started < 15 + 60  # the timeout and a start-up
    assert "Traceback" not in alone.stderr
    assert alone.stderr.strip().splitlines()[-1] == (
        f"error: process 0: the job did not form within 15 s: all 2 processes must start, with the same "
        f"JAX_COORDINATOR_ADDRESS at 127.0.0.1:{port} (set MTBERT_JOIN_TIMEOUT to wait longer)")
    assert not (tmp_path / "alone").exists()


@pytest.mark.parametrize("given, missing", [({"JAX_NUM_PROCESSES": "2"}, "JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID"),
                                            ({"JAX_PROCESS_ID": "3", "JAX_NUM_PROCESSES": "2",
                                              "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1"}, "JAX_PROCESS_ID=3"),
                                            ({"MTBERT_PEER_TIMEOUT": "soon", "JAX_PROCESS_ID": "0",
                                              "JAX_NUM_PROCESSES": "2", "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1"},
                                             "MTBERT_PEER_TIMEOUT='soon'")])
def test_half_a_cluster_environment_is_one_line(two_process_run, tmp_path, given, missing):
    config, _ = two_process_run
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_"))}
    result = subprocess.run(_train_command(config, tmp_path / "w"), cwd=ROOT, capture_output=True, text=True,
                            env={**env, "MTBERT_MALLOC_TUNABLES": "0", **given}, timeout=TIMEOUT)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and missing in last, last
    assert not (tmp_path / "w").exists()
