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

from conftest import COMMAND_ENV, tiny_training_config, write_tsv

ROOT = Path(__file__).resolve().parents[1]


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
                   check=True, cwd=ROOT, env=COMMAND_ENV, capture_output=True)
    return {"root": root, "config": config, "run": root / "run", "data": tiny_data_dir}


def _bad_data(corpus, tmp_path, file: str, lines: list[str]) -> Path:
    data = tmp_path / "data"
    shutil.copytree(corpus["data"], data)
    write_tsv(data / file, lines)
    return data


def _check(command: list[str], workdir: Path, expected: str, without_dac: bool = False):
    """Exit status 2, one error line holding `expected`, no traceback, `workdir` unchanged.
    `without_dac`: run as a user whom file permissions bind (see _without_dac)."""
    before = _hashes(workdir)
    argv = _without_dac(command) if without_dac else [sys.executable, *command]
    result = subprocess.run(argv, cwd=ROOT, env=COMMAND_ENV, capture_output=True, text=True)
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
                                       str(tmp_path / "out")], cwd=ROOT, env=COMMAND_ENV, capture_output=True, text=True).stderr


def test_evaluate_py_on_a_damaged_checkpoint(corpus, tmp_path):
    """One line, and none of the asyncio tracebacks orbax's threads print at shutdown."""
    run = tmp_path / "run"
    shutil.copytree(corpus["run"], run)
    latest = max((p for p in (run / "checkpoints").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    victim = max((p for p in latest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:1000])
    _check([str(ROOT / "evaluate.py"), "--workdir", str(run), "--checkpoint", "latest", "--out", str(tmp_path / "e")],
           run, "the checkpoint at step 2 is damaged")


def test_train_py_never_saves_non_finite_parameters(corpus, tmp_path):
    """A learning rate that sends the parameters to inf after a finite loss: the save refuses."""
    workdir = tmp_path / "run"
    result = subprocess.run([sys.executable, *_train(corpus, workdir, "--config.max_steps=3", "--config.checkpoint_every_steps=1",
                                                      "--config.optimizer.encoder_lr=1e30", "--config.optimizer.task_lr=1e30",
                                                      "--config.optimizer.max_grad_norm=0", "--config.optimizer.warmup_fraction=0")],
                            cwd=ROOT, env=COMMAND_ENV, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1, lines[-3:]
    assert "holds NaN or inf; not saved" in lines[-1] or "loss is nan" in lines[-1], lines[-1]
    saved = [p.name for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
    assert "3" not in saved  # the step whose parameters were not finite was not saved


# --- input that used to end in a traceback

LONG = "a" * 140_000
DATA_CASES |= {
    "a field past csv's limit": ("ids-sst-dev.csv", ["\tid\tsentence\tsentiment", f"0\ta\t{LONG}\t3"],
                                 "ids-sst-dev.csv: line 2: field larger than field limit"),
    "an unclosed quote with more than csv's limit after it": (
        "ids-sst-dev.csv", ["\tid\tsentence\tsentiment", '0\ta\t"open\t3', *[f"{i}\tb\t{'x' * 1000}\t1" for i in range(1, 200)]],
        "ids-sst-dev.csv: line"),
}


def test_train_py_on_a_bad_config_file_or_preset(corpus, tmp_path):
    _check([str(ROOT / "train.py"), "--config", "configs/default.py:fast", "--workdir", str(tmp_path / "w")],
           tmp_path, "--config configs/default.py:fast: ValueError: unknown preset 'fast'")
    _check([str(ROOT / "train.py"), "--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path / "w")],
           tmp_path, "nope.py: no such file")


def test_evaluate_py_on_a_checkpoint_that_is_not_one(corpus):
    _check(_evaluate(corpus, "--checkpoint", "foo"), corpus["run"], "checkpoint 'foo': expected best, latest or a step")
    _check(_evaluate(corpus, "--checkpoint", "99"), corpus["run"], "no checkpoint at step 99")


def _without_dac(command: list[str]) -> list[str]:
    """The command as a user without root's power over file permissions (root ignores chmod)."""
    if os.geteuid() != 0:
        return [sys.executable, *command]
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to drop root's file-permission capabilities")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", "--bounding-set", caps, "--inh-caps", caps, sys.executable, *command]


def test_read_only_and_unreadable_places_are_one_line(corpus, tmp_path):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    unreadable_data = tmp_path / "data"
    shutil.copytree(corpus["data"], unreadable_data)
    (unreadable_data / "ids-sst-dev.csv").chmod(0o000)
    try:
        _check(_train(corpus, read_only / "run"), read_only, "Permission denied", without_dac=True)
        _check(_train(corpus, tmp_path / "fresh", f"--config.data_dir={unreadable_data}"), tmp_path / "data",
               "ids-sst-dev.csv: Permission denied", without_dac=True)
        _check([str(ROOT / "evaluate.py"), "--workdir", str(corpus["run"]), "--out", str(read_only / "e")],
               corpus["run"], "Permission denied", without_dac=True)
    finally:
        read_only.chmod(0o755)
        (unreadable_data / "ids-sst-dev.csv").chmod(0o644)


# --- nothing the user had is lost

def test_a_refused_evaluation_keeps_the_earlier_outputs(corpus, tmp_path):
    out = tmp_path / "eval"
    done = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--workdir", str(corpus["run"]), "--out", str(out)],
                          cwd=ROOT, env=COMMAND_ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len((out / "predictions" / "sst-dev-output.csv").read_text().splitlines()) > 1
    bad = write_tsv(tmp_path / "bad.csv", ["\tid\tsentence1\tsentence2\tsimilarity", "0\ta\tb\tc\t9.0"])
    _check([str(ROOT / "evaluate.py"), "--workdir", str(corpus["run"]), "--out", str(out), "--task-file",
            f"dev:sts={bad}"], out, "bad.csv: line 2:")  # the earlier predictions and metrics.json, hashed


def test_a_missing_dev_file_is_an_error_not_a_dropped_task(corpus, tmp_path):
    sts = corpus["data"] / "sts-dev.csv"
    aside = sts.with_name("sts-dev.csv.aside")
    sts.rename(aside)  # the run's own data directory, as its saved config names it
    try:
        _check([str(ROOT / "evaluate.py"), "--workdir", str(corpus["run"]), "--out", str(tmp_path / "e")],
               corpus["run"], "sts-dev.csv: no such file, needed for the sts dev metrics")
    finally:
        aside.rename(sts)


def test_exports_never_overwrite(corpus, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep me")
    _check(_evaluate(corpus, "--export-hf", str(full)), full, f"--out {full}: exists and is not empty")
    _check(_evaluate(corpus, "--export-hf", str(corpus["run"])), corpus["run"], "inside the run")


def test_the_resume_check_survives_a_deleted_config_json(corpus, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(corpus["run"], run)
    (run / "config.json").unlink()
    _check(_train(corpus, run, "--config.model.pooling=cls"), run, "model.pooling 'mean' -> 'cls'")


def _hf_copy(tmp_path: Path) -> Path:
    from mtbert_jax.checkpoints.hf import resolve_checkpoint_dir
    copy = tmp_path / "hf"
    shutil.copytree(resolve_checkpoint_dir("default"), copy)
    return copy


def test_a_checkpoint_tensor_with_nan_is_named(corpus, tmp_path):
    from safetensors.numpy import load_file, save_file
    hf = _hf_copy(tmp_path)
    tensors = load_file(str(hf / "model.safetensors"))
    name = "encoder.layer.3.attention.self.query.weight"
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(hf / "model.safetensors"))
    _check([str(ROOT / "convert.py"), "--checkpoint", str(hf), "--out", str(tmp_path / "out")], hf, name)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    _check(_train(corpus, tmp_path / "w", f"--config.checkpoint={hf}"), hf, name)


def test_a_pickled_bin_is_refused_in_one_line(corpus, tmp_path):
    torch = pytest.importorskip("torch")
    import datetime
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(_hf_copy(tmp_path) / "config.json", bad / "config.json")
    torch.save({"when": datetime.datetime(2026, 1, 1)}, bad / "pytorch_model.bin")  # unpickling would run code
    result = subprocess.run([sys.executable, str(ROOT / "convert.py"), "--checkpoint", str(bad), "--out",
                             str(tmp_path / "out")], cwd=ROOT, env=COMMAND_ENV, capture_output=True, text=True)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "pytorch_model.bin: torch.load(weights_only=True) refused" in result.stderr


# --- checkpoints: damage that decompresses, and a check that imports only the project

def _flip_a_byte(folder: Path) -> Path:
    victim = max((p for p in folder.rglob("*") if p.is_file() and p.name != "digest.json"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    return victim


def test_a_flipped_byte_in_a_checkpoint_is_damage(corpus, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(corpus["run"], run)
    best = next(p for p in (run / "best").iterdir() if p.name.isdigit())
    victim = _flip_a_byte(best)
    _check([str(ROOT / "evaluate.py"), "--workdir", str(run), "--out", str(tmp_path / "e")], run,
           f"{victim.relative_to(best)} changed since it was saved")


def test_a_damaged_latest_checkpoint_is_set_aside_by_its_digest(corpus, tmp_path):
    """A flipped byte in the newest checkpoint: set aside, and the run resumes before it."""
    run = tmp_path / "run"
    shutil.copytree(corpus["run"], run)
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    shutil.copytree(run / "checkpoints" / str(steps[-1]), run / "checkpoints" / str(steps[-1] + 1))  # a newer copy
    _flip_a_byte(run / "checkpoints" / str(steps[-1] + 1))
    result = subprocess.run([sys.executable, *_train(corpus, run)], cwd=ROOT, env=COMMAND_ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"checkpoint at step {steps[-1] + 1} is unreadable" in result.stdout and "changed since" in result.stdout
    assert f"resumed from {run / 'checkpoints'} at step {steps[-1]}" in result.stdout


def test_the_integrity_check_never_imports_from_the_current_directory(corpus, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(corpus["run"], run)
    here = tmp_path / "here"
    here.mkdir()
    (here / "numpy.py").write_text("raise SystemExit('a numpy.py where the user stands ran')\n")
    result = subprocess.run([sys.executable, *_train(corpus, run)], cwd=here, env=COMMAND_ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "resumed from" in result.stdout and not (run / "checkpoints-unreadable").exists()


def test_a_full_disk_is_one_line_and_again_on_rerun(corpus, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("needs to mount a small tmpfs (root in a sandbox that allows it)")
    try:
        for _ in range(2):  # the rerun finds the failed save's leftovers
            result = subprocess.run([sys.executable, *_train(corpus, small / "run")], cwd=ROOT, env=COMMAND_ENV,
                                    capture_output=True, text=True)
            assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
            _one_error_line(result.stderr, "could not save the checkpoint at step 2 (no space left on the device)")
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


# --- ambiguous intent: done as a careful user expects, and said in one line

def test_duplicate_ids_and_overlong_records_are_said(corpus, tmp_path):
    long = " ".join(["word"] * 10_000)
    dev = write_tsv(tmp_path / "sts.csv", ["\tid\tsentence1\tsentence2\tsimilarity", f"0\ta\t{long}\tb\t1.0",
                                           "1\ta\tc\td\t2.0", "2\tb\te\tf\t3.0"])
    result = subprocess.run([sys.executable, *_evaluate(corpus, "--task-file", f"dev:sts={dev}")], cwd=ROOT, env=COMMAND_ENV,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sts.csv: 1 record(s) repeat an earlier id" in result.stdout
    assert "sts.csv: 1 record(s) longer than max_length=32 tokens" in result.stdout
    predictions = (corpus["root"] / "eval" / "predictions" / "sts-dev-output.csv").read_text().splitlines()
    assert [line.split(" , ")[0] for line in predictions[1:]] == ["a", "a", "b"]


def test_a_changed_length_on_resume_is_said(corpus, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(corpus["run"], run)
    result = subprocess.run([sys.executable, *_train(corpus, run, "--config.max_steps=3")], cwd=ROOT, env=COMMAND_ENV,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming with max_steps 2 -> 3: the learning-rate schedules are fitted to the new length" in result.stdout


def test_an_immediate_exit_while_output_is_silenced_still_says_its_line():
    """A second Ctrl-C or a lost peer during an orbax restore (stdout and stderr at /dev/null):
    the one line still reaches the user's stderr, and nothing the restore printed does."""
    code = ("from mtbert_jax import errors\nfrom mtbert_jax.run import preemption\n"
            "errors.mark_command_line()\n"
            "with errors.silenced_after_failure():\n"
            "    print('restore noise', flush=True)\n"
            "    preemption.hard_exit('SIGINT again: stopped at once', 130)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 130 and "restore noise" not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == ["error: SIGINT again: stopped at once"]
