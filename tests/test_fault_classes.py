"""Faults by class, over every command line: each class is a table of commands x faults run
as a user runs them (subprocesses), so that a command added later fails here until it is safe.

Classes (docs/reliability.md says which mechanism holds each):
- signals from the first second: SIGTERM or Ctrl-C while a command loads or writes ends in one
  line with its status, no traceback, the lock released and no partial output left;
- disposable caches: a damaged cache file is named in one warning line and computed again;
- one rule for output directories: a run's workdir, a directory inside a member, a non-empty one;
- values checked before work starts: non-finite numbers, undecodable files.
The multi-process classes are in tests/run/test_multiprocess.py (they share one job's start-up).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import COMMAND_ENV, tiny_training_config

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("train.py", "evaluate.py", "soup.py", "convert.py", "compare.py")

# Runs a command with a signal sent to itself at a chosen call: MODULE FUNCTION before|after
# SIGNAL COMMAND ARGS... (the hook replaces the module's attribute before the command imports it).
SIGNAL_AT_CALL = """
import importlib, os, runpy, signal, sys
module_name, function, when, name = sys.argv[1:5]
module = importlib.import_module(module_name)
real = getattr(module, function)

def hooked(*args, **kwargs):
    if when == "before":
        os.kill(os.getpid(), getattr(signal, name))
    result = real(*args, **kwargs)
    if when == "after":
        os.kill(os.getpid(), getattr(signal, name))
    return result

setattr(module, function, hooked)
sys.argv = sys.argv[5:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _write_config(path: Path, **values) -> Path:
    path.write_text("import json\n\nimport ml_collections\n\n\ndef get_config():\n"
                    f"    return ml_collections.ConfigDict(json.loads({json.dumps(values)!r}))\n")
    return path


@pytest.fixture(scope="module")
def runs(tiny_checkpoint, tiny_data_dir, tmp_path_factory):
    """Two finished tiny runs (seeds 0 and 1) and their config file."""
    root = tmp_path_factory.mktemp("classes")
    config = tiny_training_config(tiny_checkpoint, tiny_data_dir, root / "cache", num_epochs=1, max_steps=2)
    config_file = _write_config(root / "tiny.py", **config.to_dict())
    for seed in (0, 1):
        subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(config_file), "--workdir",
                        str(root / f"run{seed}"), f"--config.seed={seed}"], check=True, cwd=ROOT, env=COMMAND_ENV,
                       capture_output=True)
    return {"root": root, "config": config_file, "a": root / "run0", "b": root / "run1", "data": tiny_data_dir}


def _run(argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env or COMMAND_ENV, capture_output=True, text=True,
                          timeout=600)


def _one_line_end(result: subprocess.CompletedProcess, status: int, expected: str) -> None:
    """Exit `status`, no traceback, and stderr's last line the one error line holding `expected`."""
    output = result.stdout + result.stderr
    assert result.returncode == status, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1 and lines[-1] == errors[0] and expected in errors[0], result.stderr[-3000:]


def _files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")} if directory.exists() else set()


def test_every_command_line_is_in_the_tables():
    """A new command line (a top-level script with a __main__) must join the tables below."""
    found = {p.name for p in ROOT.glob("*.py") if '__name__ == "__main__"' in p.read_text()}
    assert found == set(COMMANDS) == set(SIGNAL_CASES)


# --- signals from the first second -------------------------------------------------------------
# command -> (arguments, hooked call "module:function", before/after it, where outputs would go).
# Each hook is a moment the command is loading or writing, before any result is complete.
SIGNAL_CASES = {
    "train.py": (lambda r, out: ["--config", str(r["config"]), "--workdir", str(out)],
                 "mtbert_jax.data.tokenized:tokenize_records", "before"),
    "evaluate.py": (lambda r, out: ["--workdir", str(r["a"]), "--workdir", str(r["b"]), "--out", str(out),
                                    "--batch-size", "16"],
                    "mtbert_jax.run.evaluate:predict_file", "after"),
    "soup.py": (lambda r, out: ["--workdir", str(r["a"]), "--workdir", str(r["b"]), "--out", str(out),
                                "--batch-size", "16"],
                "mtbert_jax.run.atomic:write_text", "after"),
    "convert.py": (lambda r, out: ["--checkpoint", str(r["a"]), "--out", str(out)],
                   "mtbert_jax.run.convert:export_hf_checkpoint", "after"),
    "compare.py": (lambda r, out: [str(r["a"]), str(r["b"])], "mtbert_jax.run.compare:read_run", "before"),
}


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("command", SIGNAL_CASES)
def test_a_signal_while_loading_or_writing_ends_in_one_line_and_leaves_nothing(runs, tmp_path, command, name):
    arguments, hook, when = SIGNAL_CASES[command]
    out = tmp_path / "out"
    if command == "train.py":  # a fresh run, with its tokenized data not yet cached
        arguments = (lambda r, o: ["--config", str(r["config"]), "--workdir", str(o),
                                   f"--config.cache_dir={tmp_path / 'cache'}"])
    members = {w: _files(runs[w]) for w in ("a", "b")}
    module, function = hook.split(":")
    result = _run(["-c", SIGNAL_AT_CALL, module, function, when, name, str(ROOT / command),
                   *arguments(runs, out)])
    resumable = command == "train.py"
    status = 130 if name == "SIGINT" else (75 if resumable else 128 + signal.SIGTERM)
    _one_line_end(result, status, f"stopped by {name}")
    # Nothing half-done: no lock, no partial directory beside the output, no output, no checkpoint.
    assert not (out / ".lock").exists()
    assert not list(tmp_path.glob(".out*")), list(tmp_path.iterdir())
    assert not (out / "checkpoints").exists() and (command == "train.py" or not out.exists())
    assert not list((tmp_path / "cache").glob(".*tmp")) if (tmp_path / "cache").exists() else True
    assert {w: _files(runs[w]) for w in ("a", "b")} == members  # the runs read are as they were


# --- disposable caches ----------------------------------------------------------------------------


def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the zip
    path.write_bytes(bytes(data))


def test_a_damaged_tokenized_cache_is_said_and_tokenized_again(runs, tmp_path):
    cache = tmp_path / "cache"
    command = ["train.py", "--config", str(runs["config"]), "--workdir", str(tmp_path / "w"),
               f"--config.cache_dir={cache}"]
    assert _run(command).returncode == 0
    damaged = sorted(cache.glob("sst-train-*.npz"))[0]
    _damage(damaged)
    (tmp_path / "w").rename(tmp_path / "first")
    result = _run(command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:") and str(damaged) in line]
    assert len(warnings) == 1 and "computing it again" in warnings[0], result.stderr[-3000:]
    # Tokenized again, the run is the one before; the cache file is whole again.
    assert _metrics_without_time(tmp_path / "w") == _metrics_without_time(tmp_path / "first")
    assert "warning" not in _run(command[:4] + [str(tmp_path / "third")] + command[5:]).stderr


def test_a_damaged_dev_output_cache_is_said_and_computed_again(runs, tmp_path, capfd):
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(runs["a"], a)
    shutil.copytree(runs["b"], b)
    first = _run(["compare.py", str(a), str(b), "--ensembles", "--no-parameters"])
    assert first.returncode == 0, first.stderr[-3000:]
    cache = next((a / "eval").glob("dev-outputs-step*.npz"))
    _damage(cache)
    again = _run(["compare.py", str(a), str(b), "--ensembles", "--no-parameters"])
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert f"warning: {cache}:" in again.stderr and again.stdout == first.stdout


def _metrics_without_time(workdir: Path) -> list[dict]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    from mtbert_jax.run.metrics_log import MEASURED_FIELDS

    return [{k: v for k, v in r.items() if k not in MEASURED_FIELDS} for r in records]


def test_the_cache_mechanism_names_every_kind_of_damage(tmp_path):
    from mtbert_jax.caches import cached_arrays, write

    path, said = tmp_path / "c.npz", []
    compute = lambda: {"x": np.arange(5)}  # noqa: E731
    write(path, "k", compute())
    assert cached_arrays(path, "k", lambda: pytest.fail("read, not computed"), warn=said.append)["x"].tolist() == \
        list(range(5)) and not said
    cases = {"another key": lambda: write(path, "other", compute()),
             "a flipped byte": lambda: _damage(path),
             "truncated": lambda: path.write_bytes(path.read_bytes()[:40]),
             "not a zip": lambda: path.write_text("hello"),
             "not ours": lambda: np.savez(path, x=np.arange(5))}
    for case, damage in cases.items():
        write(path, "k", compute())
        damage()
        said.clear()
        assert cached_arrays(path, "k", compute, warn=said.append)["x"].tolist() == list(range(5)), case
        assert len(said) == 1 and str(path) in said[0] and "computing it again" in said[0], (case, said)
        assert cached_arrays(path, "k", lambda: pytest.fail("rewritten whole"), warn=said.append)


# --- one rule for output directories -----------------------------------------------------------
# command -> arguments writing to OUT (the runs a and b are read).
OUTPUT_CASES = {
    "evaluate.py": lambda r, out: ["--workdir", str(r["a"]), "--workdir", str(r["b"]), "--out", str(out)],
    "soup.py": lambda r, out: ["--workdir", str(r["a"]), "--workdir", str(r["b"]), "--out", str(out)],
    "convert.py": lambda r, out: ["--checkpoint", str(r["a"]), "--out", str(out)],
}
OUTPUTS = {"a member's workdir": (lambda r, t: r["a"], "inside the run"),
           "another run's workdir": (lambda r, t: t / "other", "a training run's workdir"),
           "inside a member": (lambda r, t: r["a"] / "mine", "inside the run"),
           "not empty": (lambda r, t: t / "full", "exists and is not empty")}


@pytest.mark.parametrize("where", OUTPUTS)
@pytest.mark.parametrize("command", OUTPUT_CASES)
def test_outputs_never_mix_with_a_run_or_overwrite(runs, tmp_path, command, where):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text("{}")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "metrics.json").write_text('{"workdir": ["somewhere else"]}')
    place, expected = OUTPUTS[where]
    out = place(runs, tmp_path)
    before = {p: _files(p) for p in (runs["a"], runs["b"], tmp_path / "other", tmp_path / "full")}
    result = _run([command, *OUTPUT_CASES[command](runs, out)])
    _one_line_end(result, 2, expected)
    assert {p: _files(p) for p in before} == before


# --- values checked before work starts ---------------------------------------------------------
VALUE_CASES = {
    "an infinite ensemble weight": (lambda r, t: ["evaluate.py", "--workdir", str(r["a"]), "--workdir", str(r["b"]),
                                                  "--out", str(t / "o"), "--weights=inf,1"], "--weights inf,1.0"),
    "a NaN ensemble weight": (lambda r, t: ["evaluate.py", "--workdir", str(r["a"]), "--workdir", str(r["b"]),
                                            "--out", str(t / "o"), "--weights=nan,1"], "--weights nan,1.0"),
    "weights whose sum is infinite": (lambda r, t: ["evaluate.py", "--workdir", str(r["a"]), "--workdir",
                                                    str(r["b"]), "--out", str(t / "o"), "--weights=1e308,1e308"],
                                      "finite"),
    "an infinite learning rate": (lambda r, t: ["train.py", "--config", str(r["config"]), "--workdir", str(t / "w"),
                                                "--config.optimizer.encoder_lr=inf"], "optimizer.encoder_lr=inf"),
    "an infinite loss weight": (lambda r, t: ["train.py", "--config", str(r["config"]), "--workdir", str(t / "w"),
                                              "--config.loss_weights.sts=inf"], "loss_weights.sts=inf"),
    "a text file that is not UTF-8": (lambda r, t: ["evaluate.py", "--workdir", str(r["a"]), "--input-file",
                                                    str(t / "latin1.txt")], "latin1.txt: line 2: bytes that are not UTF-8"),
}


@pytest.mark.parametrize("case", VALUE_CASES)
def test_values_are_checked_before_work_starts(runs, tmp_path, case):
    (tmp_path / "latin1.txt").write_bytes("a fine film\nun film très bien\n".encode("latin-1"))
    arguments, expected = VALUE_CASES[case]
    before = {w: _files(runs[w]) for w in ("a", "b")}
    result = _run(arguments(runs, tmp_path))
    _one_line_end(result, 2, expected)
    assert not (tmp_path / "o").exists() and not (tmp_path / "w").exists()
    assert {w: _files(runs[w]) for w in ("a", "b")} == before
