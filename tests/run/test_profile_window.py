"""The profiler window on a CPU: a tiny jitted training loop traced over steps S..S+N-1 writes the
xplane and Perfetto files with one "train" annotation per traced step, and trains exactly as the
same loop without it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtbert_jax.run.profile_window import ProfileWindow


@jax.jit
def sgd_step(params, x):
    """One step of least squares towards 1 on a fixed input: a jitted update, as the loop's."""
    loss, grad = jax.value_and_grad(lambda p: jnp.mean((jnp.tanh(x @ p) - 1.0) ** 2))(params)
    return params - 0.1 * grad, loss


def train(steps: range, window: ProfileWindow | None = None):
    params = jnp.full((16, 4), 0.01)
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 16))
    for step in steps:
        if window is None:
            params, loss = sgd_step(params, x)
            continue
        window.before_step(step)
        with window.annotate(step):
            params, loss = sgd_step(params, x)
        window.after_step(step, params)
    if window is not None:
        window.close()
    return np.asarray(params)


def trace_files(logdir: Path) -> dict[str, list[Path]]:
    return {kind: sorted(logdir.glob(f"plugins/profile/*/*{kind}")) for kind in (".xplane.pb", "perfetto_trace.json.gz")}


def traced_steps(perfetto: Path) -> list[int]:
    """The step numbers of the trace's "train" step annotations."""
    events = json.loads(gzip.decompress(perfetto.read_bytes()))["traceEvents"]
    return sorted(int(e["args"]["step_num"]) for e in events if e.get("name") == "train")


def test_the_window_traces_its_steps_and_changes_nothing(tmp_path):
    lines = []
    logdir = tmp_path / "profile"
    traced = train(range(1, 7), ProfileWindow(logdir, start_step=3, num_steps=2, log=lines.append))
    np.testing.assert_array_equal(traced, train(range(1, 7)))
    files = trace_files(logdir)
    assert len(files[".xplane.pb"]) == 1 and files[".xplane.pb"][0].stat().st_size > 0
    [perfetto] = files["perfetto_trace.json.gz"]
    assert traced_steps(perfetto) == [3, 4]
    assert lines[0] == f"profile: tracing steps 3-4 into {logdir}" and lines[1].startswith("profile: written to")


def test_no_window_writes_nothing(tmp_path):
    window = ProfileWindow(tmp_path / "profile", start_step=0, num_steps=0, log=pytest.fail)
    np.testing.assert_array_equal(train(range(1, 4), window), train(range(1, 4)))
    assert not (tmp_path / "profile").exists()
    with pytest.raises(ValueError, match="start_step=0"):
        ProfileWindow(tmp_path / "profile", start_step=0, num_steps=2)


def test_a_run_resumed_inside_the_window_traces_the_rest_and_one_ending_inside_it_stops_the_trace(tmp_path):
    resumed = tmp_path / "resumed"
    train(range(4, 8), ProfileWindow(resumed, start_step=3, num_steps=3, log=lambda line: None))
    assert traced_steps(trace_files(resumed)["perfetto_trace.json.gz"][0]) == [4, 5]

    ended = tmp_path / "ended"
    train(range(1, 4), ProfileWindow(ended, start_step=3, num_steps=5, log=lambda line: None))  # close() stops it
    assert traced_steps(trace_files(ended)["perfetto_trace.json.gz"][0]) == [3]
    jax.profiler.start_trace(str(tmp_path / "after"))  # no trace was left running
    jax.profiler.stop_trace()


def test_a_trace_that_cannot_start_is_one_line_and_training_goes_on(tmp_path):
    lines = []
    jax.profiler.start_trace(str(tmp_path / "someone-else"))  # only one trace may run at a time
    try:
        traced = train(range(1, 4), ProfileWindow(tmp_path / "profile", 2, 1, log=lines.append))
    finally:
        jax.profiler.stop_trace()
    np.testing.assert_array_equal(traced, train(range(1, 4)))
    assert len(lines) == 1 and lines[0].startswith("profile: starting the trace at step 2 failed")
