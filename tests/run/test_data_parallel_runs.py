"""The training step on several devices, processes and micro-batches equals the step on one
device: four devices, gradient accumulation, packing per device share, and two processes joined
by jax.distributed."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """`steps(devices, accumulation, mnrl, packing)`: the parameters after a few steps run that
    way (tests/training/data_parallel_steps.py, a process of its own), each computed once per
    module: several tests compare against the same one-device run."""
    root = tmp_path_factory.mktemp("data_parallel")

    @functools.cache
    def run(devices: int, accumulation: int = 1, mnrl: bool = False, packing: bool = False) -> dict:
        path = root / f"{devices}x{accumulation}-{'mnrl' if mnrl else 'plain'}-{'packed' if packing else 'padded'}.npz"
        subprocess.run([sys.executable, str(ROOT / "tests" / "training" / "data_parallel_steps.py"),
                        str(devices), str(path), str(accumulation), "mnrl" if mnrl else "plain",
                        "packed" if packing else "padded"], check=True, cwd=ROOT, env=dict(os.environ))
        return dict(np.load(path))

    return run


@pytest.mark.parametrize("mnrl", [False, True], ids=["plain", "mnrl"])
def test_four_devices_take_the_same_steps_as_one(steps, mnrl):
    """MNRL included: its in-batch negatives span the four devices' rows."""
    one, four = steps(1, mnrl=mnrl), steps(4, mnrl=mnrl)
    for name in one:
        np.testing.assert_allclose(four[name], one[name], atol=1e-5, err_msg=name)


@pytest.mark.parametrize("mnrl", [False, True], ids=["plain", "mnrl"])
def test_gradient_accumulation_equals_the_full_batch(steps, mnrl):
    """MNRL included: its gradient cache makes two micro-batches one batch of negatives."""
    full, accumulated = steps(1, mnrl=mnrl), steps(1, 2, mnrl=mnrl)
    for name in full:
        np.testing.assert_allclose(accumulated[name], full[name], atol=1e-5, err_msg=name)


def test_packed_steps_on_four_devices_and_micro_batches_equal_padded_steps_on_one(steps):
    """Dropout and MNRL on: each device's and micro-batch's share is packed on its own, and the
    steps equal those of the padded batches on one device."""
    padded = steps(1, mnrl=True)
    for devices, accumulation in ((4, 1), (2, 2)):
        packed = steps(devices, accumulation, mnrl=True, packing=True)
        for name in padded:
            np.testing.assert_allclose(packed[name], padded[name], atol=1e-5, err_msg=f"{devices}x{accumulation} {name}")


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_two_processes_on_localhost_agree(steps, tmp_path, packing):
    """jax.distributed across two processes (CPU, gloo): each feeds half of every batch (packed:
    each process's half packed on its own); both equal one padded device."""
    import socket

    with socket.socket() as s:  # a free port on the loopback interface
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)
    script = str(ROOT / "tests" / "training" / "two_process_steps.py")
    processes = [subprocess.Popen([sys.executable, script, str(i), "2", str(port), str(tmp_path / f"p{i}.npz"),
                                   "packed" if packing else "padded"],
                                  env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i in range(2)]
    for p in processes:
        output, _ = p.communicate(timeout=300)
        assert p.returncode == 0, output[-3000:]
    first, second = (dict(np.load(tmp_path / f"p{i}.npz")) for i in range(2))
    one = steps(1)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
        np.testing.assert_allclose(first[name], one[name], atol=1e-5, err_msg=name)
