"""Our encoder against transformers' PyTorch BertModel (eval mode), in float32."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import save_torch_bert  # noqa: E402
from mtbert_jax.checkpoints.hf import export_hf_checkpoint, load_hf_checkpoint  # noqa: E402
from mtbert_jax.checkpoints.tokenizer import BertTextTokenizer  # noqa: E402
from mtbert_jax.model.encoder import BertModel  # noqa: E402

TOLERANCE = 1e-4
SENTENCES = ["The movie was surprisingly good.", "Terrible.",
             "A long, rambling, and ultimately pointless film about nothing at all, really."]
PARTNERS = ["I liked the film a lot.", "Awful acting and a worse plot.", "Short."]


def _batches(tokenizer):
    """A single-sentence batch with padding, and a sentence-pair batch (token types 0/1)."""
    return [tokenizer(SENTENCES, max_length=64), tokenizer(SENTENCES, PARTNERS, max_length=64)]


def _torch_outputs(model, batch):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(batch.input_ids, dtype=torch.long),
                    token_type_ids=torch.tensor(batch.token_type_ids, dtype=torch.long),
                    attention_mask=torch.tensor(batch.attention_mask, dtype=torch.long))
    return out.last_hidden_state.numpy(), out.pooler_output.numpy()


def _assert_parity(checkpoint_dir, torch_model, tokenizer):
    config, params, _ = load_hf_checkpoint(checkpoint_dir)
    model = BertModel(config)
    for batch in _batches(tokenizer):
        assert (batch.attention_mask == 0).any(), "the batch should contain padding"
        ours = model.apply({"params": params}, batch.input_ids, batch.token_type_ids,
                           batch.attention_mask)
        seq, pooled = _torch_outputs(torch_model, batch)
        assert np.abs(np.asarray(ours.sequence_output) - seq).max() <= TOLERANCE
        assert np.abs(np.asarray(ours.pooled_output) - pooled).max() <= TOLERANCE
    return config, params


def test_parity_real_minilm_checkpoint(minilm_dir):
    reference = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
    _assert_parity(minilm_dir, reference, BertTextTokenizer(minilm_dir))


@pytest.fixture(scope="module")
def bert_base_dirs(tmp_path_factory, minilm_dir):
    """A randomly initialised bert-base (BertConfig() defaults) as safetensors and as .bin."""
    root = tmp_path_factory.mktemp("bert_base")
    st = save_torch_bert(root / "safetensors", tokenizer_from=minilm_dir)
    binary = save_torch_bert(root / "bin", safetensors=False, tokenizer_from=minilm_dir)
    model = transformers.BertModel.from_pretrained(str(st)).eval()
    return st, binary, model


@pytest.mark.parametrize("layout", ["safetensors", "bin"])
def test_parity_random_bert_base(bert_base_dirs, layout):
    st, binary, reference = bert_base_dirs
    directory = st if layout == "safetensors" else binary
    config, _ = _assert_parity(directory, reference, BertTextTokenizer(directory))
    assert (config.num_hidden_layers, config.hidden_size) == (12, 768)


def test_export_round_trip_through_transformers(tmp_path, minilm_dir):
    config, params, _ = load_hf_checkpoint(minilm_dir)
    out = export_hf_checkpoint(params, config, tmp_path / "export", tokenizer_dir=minilm_dir)
    reloaded = transformers.BertModel.from_pretrained(str(out)).eval()
    tokenizer = BertTextTokenizer(out)  # the exported tokenizer files work on their own
    assert tokenizer.fingerprint == BertTextTokenizer(minilm_dir).fingerprint
    _assert_parity(out, reloaded, tokenizer)
    # and transformers' outputs of the export equal our outputs of the original parameters
    original = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
    for batch in _batches(tokenizer):
        np.testing.assert_array_equal(_torch_outputs(original, batch)[0],
                                      _torch_outputs(reloaded, batch)[0])
