"""The MPNet family against transformers' PyTorch MPNetModel (eval mode): random small MPNet
checkpoints, padded and packed, float32 to 1e-5 and bfloat16 within its rounding; the tokenizer's
`<s> A </s></s> B </s>` pairs; a load -> export -> AutoModel round trip that is exact.

The real all-mpnet-base-v2 was checked once the same way (docs/usage.md, "MPNet").
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mpnet_checkpoints import save_torch_mpnet  # noqa: E402

from mtbert_jax.checkpoints.hf import export_hf_checkpoint, hf_name, load_hf_checkpoint  # noqa: E402
from mtbert_jax.checkpoints.tokenizer import BertTextTokenizer  # noqa: E402
from mtbert_jax.errors import CheckpointError  # noqa: E402
from mtbert_jax.model.bert_config import BertConfig  # noqa: E402
from mtbert_jax.model.encoder import BertModel, packed_attention_bias  # noqa: E402
from mtbert_jax.model.families import BERT, MPNET, relative_position_buckets  # noqa: E402

TOLERANCE = 1e-5
LONG = " ".join(["the film's plot moves slowly but the actors keep it alive"] * 20)  # ~220 tokens
SENTENCES = ["The movie was surprisingly good.", "Terrible.", LONG,
             "A long, rambling, and ultimately pointless film about nothing at all, really."]
PARTNERS = ["I liked the film a lot.", "Awful acting and a worse plot.", "Short.", "Why?"]


@pytest.fixture(scope="module", params=[{}, {"hidden_size": 48, "num_attention_heads": 6, "num_hidden_layers": 3}],
                ids=["h32x2", "h48x3"])
def mpnet(request, tmp_path_factory, minilm_dir):
    """(directory, transformers' MPNetModel, our config and parameters)."""
    directory = save_torch_mpnet(tmp_path_factory.mktemp("mpnet") / "model", minilm_dir / "vocab.txt",
                                 seed=len(request.param), **request.param)
    reference = transformers.MPNetModel.from_pretrained(str(directory)).eval()
    config, params, report = load_hf_checkpoint(directory)
    assert config.family is MPNET and not report.initialised
    return directory, reference, config, params


def _reference(model, batch):
    """transformers' last hidden state and pooler output; positions as transformers makes them
    (from the ids: our batches pad with <pad>)."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor(batch.input_ids, dtype=torch.long),
                    attention_mask=torch.tensor(batch.attention_mask, dtype=torch.long))
    return out.last_hidden_state.numpy(), out.pooler_output.numpy()


def _batches(tokenizer):
    return [tokenizer(SENTENCES, max_length=300), tokenizer(SENTENCES, PARTNERS, max_length=300)]


def _real_difference(ours, reference, mask) -> float:
    """Max abs difference over real tokens (transformers' outputs at padding are not ours)."""
    return float(np.abs(np.where(mask[..., None] > 0, np.asarray(ours, np.float32) - reference, 0.0)).max())


def test_relative_buckets_are_transformers(mpnet):
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    seq = 700
    columns = torch.arange(seq)
    expected = MPNetEncoder.relative_position_bucket(columns[None, :] - columns[:, None]).numpy()
    np.testing.assert_array_equal(relative_position_buckets(seq), expected)
    assert set(np.unique(expected)) == set(range(32)) - {16}  # every bucket met (16: keys after, distance 0)


def test_tokenizer_pairs_as_mpnet_and_as_transformers(mpnet):
    directory, *_ = mpnet
    tokenizer = BertTextTokenizer(directory)
    batch = tokenizer(["Hello world"], ["How are you?"])
    tokens = tokenizer.hf.convert_ids_to_tokens(batch.input_ids[0].tolist())
    assert tokens == ["<s>", "hello", "world", "</s>", "</s>", "how", "are", "you", "?", "</s>"]
    assert MPNET.pair_template == "<s> A </s></s> B </s>"
    assert tokenizer.pad_token_id == 1
    # Token types as BERT's (the model has none): 1 from the second </s> on.
    assert batch.token_type_ids[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    # Truncation longest-first, as transformers' own MPNet tokenizer does it.
    hf = transformers.AutoTokenizer.from_pretrained(str(directory))
    for max_length in (7, 12, 40):
        ours = tokenizer.tokenize([LONG, "Short."], ["Why?", LONG], max_length=max_length)
        theirs = hf([LONG, "Short."], ["Why?", LONG], truncation="longest_first", max_length=max_length)["input_ids"]
        assert [x.tolist() for x in ours.input_ids] == theirs
    # The same vocabulary paired as BERT would be another tokenization: cached apart.
    bert = directory.parent / "as_bert"
    bert.mkdir(exist_ok=True)
    (bert / "vocab.txt").write_bytes((directory / "vocab.txt").read_bytes())
    assert BertTextTokenizer(bert).fingerprint != tokenizer.fingerprint


def test_parity_padded_float32(mpnet):
    directory, reference, config, params = mpnet
    model = BertModel(config)
    for batch in _batches(BertTextTokenizer(directory)):
        assert (batch.attention_mask == 0).any() and batch.input_ids.shape[1] > 200  # padding; distances past 128
        ours = model.apply({"params": params}, batch.input_ids, batch.token_type_ids, batch.attention_mask)
        seq, pooled = _reference(reference, batch)
        assert _real_difference(ours.sequence_output, seq, batch.attention_mask) <= TOLERANCE
        np.testing.assert_allclose(np.asarray(ours.pooled_output), pooled, atol=TOLERANCE, rtol=0)


def test_parity_packed_float32(mpnet):
    """Several examples in one row, attending to their own tokens, positions restarting: each
    example's tokens as transformers computes the example alone."""
    directory, reference, config, params = mpnet
    batch = BertTextTokenizer(directory)(SENTENCES, PARTNERS, max_length=300)
    lengths = batch.attention_mask.sum(1)
    order = [2, 0, 3, 1]  # the long one first: the others sit at columns far from 0
    row = np.concatenate([batch.input_ids[i, :lengths[i]] for i in order])[None]
    slot = np.concatenate([np.full(lengths[i], k) for k, i in enumerate(order)])[None]
    positions = np.concatenate([np.arange(lengths[i]) for i in order])[None]
    row, slot, positions = (np.pad(x, ((0, 0), (0, 9)), constant_values=v) for x, v in ((row, 1), (slot, -1), (positions, 0)))
    model = BertModel(config)
    x = model.apply({"params": params}, row, None, True, None, positions, method=BertModel.embed)
    packed = model.apply({"params": params}, x, None, bias=packed_attention_bias(slot), method=BertModel.encode)
    seq, _ = _reference(reference, batch)
    start = 0
    for i in order:
        n = lengths[i]
        np.testing.assert_allclose(np.asarray(packed[0, start:start + n]), seq[i, :n], atol=TOLERANCE, rtol=0)
        start += n


def test_bfloat16_within_its_rounding(mpnet):
    directory, reference, config, params = mpnet
    model = BertModel(config.replace(compute_dtype="bfloat16"))
    for batch in _batches(BertTextTokenizer(directory)):
        ours = model.apply({"params": params}, batch.input_ids, batch.token_type_ids, batch.attention_mask)
        seq, _ = _reference(reference, batch)
        diff = np.abs(np.asarray(ours.sequence_output, np.float32) - seq)[batch.attention_mask > 0]
        # Post-LayerNorm outputs have unit scale; bfloat16 has ~3 significant digits (as BERT's
        # test_encoder.py; measured here: max 0.02-0.03).
        assert diff.max() < 0.1 and diff.mean() < 0.02, (diff.max(), diff.mean())


def test_export_round_trip_is_exact_and_loads_in_automodel(mpnet, tmp_path):
    directory, reference, config, params = mpnet
    out = export_hf_checkpoint(params, config, tmp_path / "export", tokenizer_dir=directory)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["MPNetModel"]
    reloaded = transformers.AutoModel.from_pretrained(str(out)).eval()
    assert type(reloaded).__name__ == "MPNetModel"
    assert reloaded.state_dict().keys() == reference.state_dict().keys()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name
    _, reread, _ = load_hf_checkpoint(out)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(reread)):
        np.testing.assert_array_equal(a, b)
    tokenizer = BertTextTokenizer(out)  # the exported tokenizer files work on their own
    assert tokenizer.fingerprint == BertTextTokenizer(directory).fingerprint
    for batch in _batches(tokenizer):
        np.testing.assert_array_equal(_reference(reloaded, batch)[0], _reference(reference, batch)[0])


def test_tensor_names_are_a_table():
    assert hf_name(("encoder", "layer_3", "attention", "self", "query", "kernel"), MPNET) == \
        "encoder.layer.3.attention.attn.q.weight"
    assert hf_name(("encoder", "layer_0", "attention", "output", "LayerNorm", "scale"), MPNET) == \
        "encoder.layer.0.attention.LayerNorm.weight"
    assert hf_name(("encoder", "relative_attention_bias", "embedding"), MPNET) == "encoder.relative_attention_bias.weight"
    assert hf_name(("encoder", "layer_3", "attention", "self", "query", "kernel"), BERT) == \
        "encoder.layer.3.attention.self.query.weight"


def test_sequence_classification_layout_loads(tmp_path, minilm_dir):
    """MPNetForSequenceClassification keeps the encoder under `mpnet.`: its encoder loads, the
    classifier is reported unused."""
    directory = save_torch_mpnet(tmp_path / "cls", minilm_dir / "vocab.txt", model_class="MPNetForSequenceClassification")
    reference = transformers.MPNetModel.from_pretrained(str(directory)).eval()  # its encoder
    config, params, report = load_hf_checkpoint(directory)
    assert sorted(report.initialised) == ["pooler.dense.bias", "pooler.dense.weight"]  # the class has no pooler
    assert "classifier.out_proj.weight" in report.unused
    batch = BertTextTokenizer(directory)(SENTENCES[:2], max_length=32)
    ours = BertModel(config).apply({"params": params}, batch.input_ids, None, batch.attention_mask)
    assert _real_difference(ours.sequence_output, _reference(reference, batch)[0], batch.attention_mask) <= TOLERANCE


@pytest.mark.parametrize("change, said", [
    ({"relative_attention_num_buckets": 16}, "relative_attention_num_buckets=16: mpnet has 32"),
    ({"max_position_embeddings": 2}, "max_position_embeddings=2: expected more than 2"),
    ({"hidden_act": "relu"}, "hidden_act='relu'"),
])
def test_configs_mpnet_cannot_run_are_refused_in_one_line(tmp_path, change, said):
    raw = {"model_type": "mpnet", "hidden_size": 32, "num_attention_heads": 4, **change}
    with pytest.raises(CheckpointError, match=said) as error:
        BertConfig.from_hf_dict(raw, source="x/config.json")
    assert str(error.value).startswith("x/config.json: ") and "\n" not in str(error.value)


def test_mpnet_config_round_trips():
    config = BertConfig.from_hf_dict({"model_type": "mpnet", "layer_norm_eps": 1e-5, "max_position_embeddings": 514})
    assert (config.type_vocab_size, config.relative_attention_num_buckets, config.max_positions) == (0, 32, 512)
    assert BertConfig.from_hf_dict(config.to_hf_dict()) == config
    assert transformers.MPNetConfig(**config.to_hf_dict()).layer_norm_eps == 1e-5
