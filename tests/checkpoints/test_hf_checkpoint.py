"""Conversion: layouts, the report of unused / initialised tensors, and clear errors."""

from __future__ import annotations

import json
import pickle
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import TINY, save_torch_bert
from mtbert_jax.checkpoints.hf import CheckpointError, hf_name, load_hf_checkpoint
from mtbert_jax.model.bert_config import UnsupportedConfigError
from mtbert_jax.run import convert

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_torch_bert(tmp_path_factory.mktemp("tiny") / "model", **TINY)


def _params_equal(a, b):
    import jax
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_name_table():
    assert hf_name(("encoder", "layer_11", "attention", "self", "query", "kernel")) == \
        "encoder.layer.11.attention.self.query.weight"
    assert hf_name(("embeddings", "LayerNorm", "scale")) == "embeddings.LayerNorm.weight"
    assert hf_name(("embeddings", "word_embeddings", "embedding")) == "embeddings.word_embeddings.weight"
    assert hf_name(("pooler", "dense", "bias")) == "pooler.dense.bias"


@pytest.mark.parametrize("model_class, unused_prefix", [
    ("BertForSequenceClassification", "classifier."),
    ("BertForPreTraining", "cls."),
])
def test_task_model_layouts_load_the_same_encoder(tmp_path, tiny_dir, model_class, unused_prefix):
    _, reference, _ = load_hf_checkpoint(tiny_dir)
    # Same seed, same init order: the bert.* part of these models equals the plain BertModel.
    directory = save_torch_bert(tmp_path / model_class, model_class=model_class, **TINY)
    keys = load_file(str(directory / "model.safetensors")).keys()
    assert any(k.startswith("bert.") for k in keys)
    _, params, report = load_hf_checkpoint(directory)
    assert report.unused and all(k.startswith(unused_prefix) or k.endswith("position_ids")
                                 for k in report.unused)
    assert not report.initialised
    assert set(params) == set(reference)


def test_without_pooler_the_pooler_is_initialised_and_reported(tmp_path, tiny_dir):
    tensors = {k: v for k, v in load_file(str(tiny_dir / "model.safetensors")).items()
               if not k.startswith("pooler.")}
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    _, params, report = load_hf_checkpoint(tmp_path)
    assert sorted(report.initialised) == ["pooler.dense.bias", "pooler.dense.weight"]
    assert params["pooler"]["dense"]["kernel"].shape == (32, 32)
    assert "freshly initialised" in report.summary()


def test_old_gamma_beta_names_and_bert_prefix(tmp_path, tiny_dir):
    _, reference, _ = load_hf_checkpoint(tiny_dir)
    renamed = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma")
               .replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in load_file(str(tiny_dir / "model.safetensors")).items()}
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    save_file(renamed, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    _, params, _ = load_hf_checkpoint(tmp_path)
    _params_equal(params, reference)


def test_bin_and_safetensors_give_identical_params(tmp_path, tiny_dir):
    binary = save_torch_bert(tmp_path / "bin", safetensors=False, **TINY)
    _params_equal(load_hf_checkpoint(binary)[1], load_hf_checkpoint(tiny_dir)[1])


def _copy_with(tmp_path, tiny_dir, tensors=None, config=None):
    tensors = load_file(str(tiny_dir / "model.safetensors")) if tensors is None else tensors
    raw = json.loads((tiny_dir / "config.json").read_text()) | (config or {})
    (tmp_path / "config.json").write_text(json.dumps(raw))
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    return tmp_path


def test_missing_tensor_is_named(tmp_path, tiny_dir):
    tensors = load_file(str(tiny_dir / "model.safetensors"))
    del tensors["encoder.layer.1.output.dense.weight"]
    with pytest.raises(CheckpointError, match=r"missing: encoder\.layer\.1\.output\.dense\.weight"):
        load_hf_checkpoint(_copy_with(tmp_path, tiny_dir, tensors=tensors))


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path, tiny_dir):
    directory = _copy_with(tmp_path, tiny_dir, config={"intermediate_size": 48})
    with pytest.raises(CheckpointError) as err:
        load_hf_checkpoint(directory)
    message = str(err.value)
    assert "encoder.layer.0.intermediate.dense.weight: checkpoint has shape (64, 32), " \
           "config.json implies (48, 32)" in message


def test_unsupported_config_is_refused(tmp_path, tiny_dir):
    with pytest.raises(UnsupportedConfigError, match="hidden_act='silu'"):
        load_hf_checkpoint(_copy_with(tmp_path, tiny_dir, config={"hidden_act": "silu"}))


def test_corrupted_safetensors_names_the_file(tmp_path, tiny_dir):
    directory = _copy_with(tmp_path, tiny_dir)
    data = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_hf_checkpoint(directory)


def test_no_weights_and_no_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="no weights found"):
        load_hf_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not a directory"):
        load_hf_checkpoint(tmp_path / "nope")


class _Payload:
    """Unpickling this would run code; torch.load(weights_only=True) must refuse it."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_bin_is_never_unpickled(tmp_path, tiny_dir, capsys):
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"embeddings.word_embeddings.weight": _Payload()}, f)
    with pytest.raises(CheckpointError, match=r"weights_only=True\) refused"):
        load_hf_checkpoint(tmp_path)
    assert "pwned" not in capsys.readouterr().out


def test_bin_without_torch_says_so(tmp_path, tiny_dir, monkeypatch):
    binary = save_torch_bert(tmp_path / "bin", safetensors=False, **TINY)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(CheckpointError, match="only be read with torch installed"):
        load_hf_checkpoint(binary)


def test_convert_command_line(tmp_path, tiny_dir, minilm_dir, capsys):
    source = save_torch_bert(tmp_path / "src", tokenizer_from=minilm_dir, **TINY)
    assert convert.main(["--checkpoint", str(source), "--out", str(tmp_path / "out")]) == 0
    assert "max abs difference 0" in capsys.readouterr().out
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        assert (tmp_path / "out" / name).exists()
    (tmp_path / "broken").mkdir()
    broken = _copy_with(tmp_path / "broken", tiny_dir, config={"hidden_act": "relu"})
    assert convert.main(["--checkpoint", str(broken), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "hidden_act='relu'" in err and "Traceback" not in err
