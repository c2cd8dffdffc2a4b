"""The fault corpus: train.py, evaluate.py and convert run as a user runs them, on bad input.

Each case must end with exit status 2 and one line naming the file and line, field, tensor or
config key, no traceback, and every file already in the workdir unchanged (hashed before and
after)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_training_config, write_tsv

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MTBERT_MALLOC_TUNABLES": "0"}


def _hashes(workdir: Path) -> dict:
    if not workdir.exists():
        return {}
    return {str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(workdir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tiny_checkpoint, tiny_data_dir, tmp_path_factory):
    """A trained tiny run, its config file, and a copy of the data to damage."""
    root = tmp_path_factory.mktemp("corpus")
    values = tiny_training_config(tiny_checkpoint, tiny_data_dir, root / "cache", num_epochs=1, max_steps=2).to_json()
    config = root / "tiny.py"
    config.write_text("import json\n\nimport ml_collections\n\n\ndef get_config():\n"
                      f"    return ml_collections.ConfigDict(json.loads({values!r}))\n")
    subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(config), "--workdir", str(root / "run")],
                   check=True, cwd=ROOT, env=ENV, capture_output=True)
    return {"root": root, "config": config, "run": root / "run", "data": tiny_data_dir}


def _bad_data(corpus, tmp_path, file: str, lines: list[str]) -> Path:
    data = tmp_path / "data"
    shutil.copytree(corpus["data"], data)
    write_tsv(data / file, lines)
    return data


def _check(command: list[str], workdir: Path, expected: str):
    before = _hashes(workdir)
    result = subprocess.run([sys.executable, *command], cwd=ROOT, env=ENV, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    _one_error_line(result.stderr, expected)
    assert _hashes(workdir) == before


def _one_error_line(stderr: str, expected: str) -> None:
    """The run's last line on stderr is its one error line (progress bars may come before it)."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1 and lines[-1] == errors[0] and expected in errors[0], stderr[-3000:]


def _train(corpus, workdir, *flags):
    return [str(ROOT / "train.py"), "--config", str(corpus["config"]), "--workdir", str(workdir), *flags]


TRAIN_CASES = {
    "unknown field": (["--config.foo=1"], "no config field 'foo'"),
    "zero checkpoint interval": (["--config.checkpoint_every_steps=0"], "checkpoint_every_steps=0"),
    "zero accumulation": (["--config.accumulation_steps=0"], "accumulation_steps=0"),
    "negative learning rate": (["--config.optimizer.encoder_lr=-1e-5"], "optimizer.encoder_lr=-1e-05"),
    "zero batch": (["--config.schedule.batch_size=0"], "schedule.batch_size=0"),
    "too long for the positions": (["--config.max_length=1000"], "max_length=1000"),
    "changed model on resume": (["--config.model.pooling=cls"], "model.pooling 'mean' -> 'cls'"),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_py_on_bad_configuration(corpus, case):
    flags, expected = TRAIN_CASES[case]
    _check(_train(corpus, corpus["run"], *flags), corpus["run"], expected)


DATA_CASES = {
    "header-only training file": ("ids-sst-train.csv", ["\tid\tsentence\tsentiment"],
                                  "ids-sst-train.csv: no sst records after the header"),
    "training file without labels": ("ids-sst-train.csv", ["\tid\tsentence", "0\ta\tfine"],
                                     "ids-sst-train.csv: line 1: no 'sentiment' column"),
    "unclosed quote": ("sts-dev.csv", ["\tid\tsentence1\tsentence2\tsimilarity", '0\ta\t"open\tb\t1.0',
                                       "1\tb\tc\td\t2.0", '2\tc\te\tf"\t3.0'], "sts-dev.csv: line 2: a quoted field runs on"),
    "label out of range": ("ids-sst-dev.csv", ["\tid\tsentence\tsentiment", "0\ta\tfine\t7"], "ids-sst-dev.csv: line 2:"),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_train_py_on_bad_task_files(corpus, tmp_path, case):
    file, lines, expected = DATA_CASES[case]
    data = _bad_data(corpus, tmp_path, file, lines)
    _check(_train(corpus, corpus["run"], f"--config.data_dir={data}"), corpus["run"], expected)


def test_train_py_on_a_busy_workdir(corpus):
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    lock = corpus["run"] / ".lock"
    try:
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": alive.pid, "since": "now"}))
        _check(_train(corpus, corpus["run"]), corpus["run"], f"pid {alive.pid}")
    finally:
        lock.unlink()
        alive.kill()


def _evaluate(corpus, *flags):
    return [str(ROOT / "evaluate.py"), "--workdir", str(corpus["run"]), "--out", str(corpus["root"] / "eval"), *flags]


def test_evaluate_py_on_bad_input(corpus, tmp_path):
    sts = corpus["data"] / "sts-dev.csv"
    _check(_evaluate(corpus, "--task-file", f"dev:STS={sts}"), corpus["run"], "unknown task 'STS'")
    _check(_evaluate(corpus, "--task-file", f"val:sts={sts}"), corpus["run"], "unknown split 'val'")
    _check(_evaluate(corpus, "--task-file", f"dev:cfimdb={sts}"), corpus["run"], "the model has no cfimdb head")
    unlabelled = write_tsv(tmp_path / "unlabelled.csv", ["\tid\tsentence1\tsentence2", "0\ta\tb\tc"])
    _check(_evaluate(corpus, "--task-file", f"dev:sts={unlabelled}"), corpus["run"], "unlabelled.csv: no 'similarity' column")
    header_only = write_tsv(tmp_path / "empty.csv", ["\tid\tsentence1\tsentence2\tsimilarity"])
    _check(_evaluate(corpus, "--task-file", f"dev:sts={header_only}"), corpus["run"], "empty.csv: no sts records")
    empty = tmp_path / "no-run"
    empty.mkdir()
    _check([str(ROOT / "evaluate.py"), "--workdir", str(empty)], empty, "no checkpoint")


@pytest.mark.parametrize("content, expected", [(3, "found int"), ({"a": {"b": 1}}, "'a' holds a dict")])
def test_convert_on_a_bin_that_is_not_a_state_dict(corpus, tmp_path, content, expected):
    torch = pytest.importorskip("torch")
    from mtbert_jax.checkpoints.hf import resolve_checkpoint_dir
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(resolve_checkpoint_dir("default") / "config.json", bad / "config.json")
    torch.save(content, bad / "pytorch_model.bin")
    _check([str(ROOT / "convert.py"), "--checkpoint", str(bad), "--out", str(tmp_path / "out")], bad,
           "pytorch_model.bin: expected a state dict of tensors")
    assert expected in subprocess.run([sys.executable, str(ROOT / "convert.py"), "--checkpoint", str(bad), "--out",
                                       str(tmp_path / "out")], cwd=ROOT, env=ENV, capture_output=True, text=True).stderr


def test_evaluate_py_on_a_damaged_checkpoint(corpus, tmp_path):
    """One line, and none of the asyncio tracebacks orbax's threads print at shutdown."""
    run = tmp_path / "run"
    shutil.copytree(corpus["run"], run)
    latest = max((p for p in (run / "checkpoints").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    victim = max((p for p in latest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:1000])
    _check([str(ROOT / "evaluate.py"), "--workdir", str(run), "--checkpoint", "latest", "--out", str(tmp_path / "e")],
           run, "cannot restore")


def test_train_py_never_saves_non_finite_parameters(corpus, tmp_path):
    """A learning rate that sends the parameters to inf after a finite loss: the save refuses."""
    workdir = tmp_path / "run"
    result = subprocess.run([sys.executable, *_train(corpus, workdir, "--config.max_steps=3", "--config.checkpoint_every_steps=1",
                                                      "--config.optimizer.encoder_lr=1e30", "--config.optimizer.task_lr=1e30",
                                                      "--config.optimizer.max_grad_norm=0", "--config.optimizer.warmup_fraction=0")],
                            cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1, lines[-3:]
    assert "holds NaN or inf; not saved" in lines[-1] or "loss is nan" in lines[-1], lines[-1]
    saved = [p.name for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
    assert "3" not in saved  # the step whose parameters were not finite was not saved
