import json

import pytest
import transformers

from mtbert_jax.model.bert_config import BertConfig, UnsupportedConfigError


def test_reads_every_field_from_config_json(minilm_dir):
    config = BertConfig.from_json_file(minilm_dir / "config.json")
    raw = json.loads((minilm_dir / "config.json").read_text())
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "vocab_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
                  "hidden_dropout_prob", "attention_probs_dropout_prob", "hidden_act"):
        assert getattr(config, field) == raw[field], field
    assert config.compute_dtype == "float32"


@pytest.mark.parametrize("change, words", [
    ({"hidden_act": "relu"}, ["hidden_act", "relu", "gelu"]),
    ({"position_embedding_type": "relative_key"}, ["position_embedding_type", "relative_key"]),
    ({"hidden_size": 30, "num_attention_heads": 4}, ["hidden_size=30", "num_attention_heads=4"]),
    ({"model_type": "roberta"}, ["model_type", "roberta"]),
    ({"hidden_dropout_prob": 1.5}, ["hidden_dropout_prob"]),
])
def test_unsupported_values_are_refused_by_name(change, words):
    raw = transformers.BertConfig().to_dict() | change
    with pytest.raises(UnsupportedConfigError) as err:
        BertConfig.from_hf_dict(raw, source="some/config.json")
    for word in words + ["some/config.json"]:
        assert word in str(err.value)


def test_compute_dtype_is_validated():
    with pytest.raises(UnsupportedConfigError, match="compute_dtype"):
        BertConfig(compute_dtype="float16")


def test_hf_dict_round_trips_through_transformers():
    config = BertConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=128, layer_norm_eps=1e-7)
    hf = transformers.BertConfig(**config.to_hf_dict())
    assert BertConfig.from_hf_dict(hf.to_dict()) == config
