"""The encoder's hyper-parameters, read from a Hugging Face config.json and validated."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import jax.numpy as jnp

from mtbert_jax.errors import CheckpointError


class UnsupportedConfigError(CheckpointError):
    """A config.json asks for something this encoder does not implement."""


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a post-LayerNorm BERT encoder (names as in config.json)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    # Not from config.json: the dtype matmuls run in. Parameters, LayerNorm and softmax
    # always stay float32.
    compute_dtype: str = "float32"

    def __post_init__(self):
        problems = []
        if self.hidden_act != "gelu":
            problems.append(
                f"hidden_act={self.hidden_act!r}: only 'gelu' (exact erf GELU, as in BERT) is supported")
        if self.hidden_size % self.num_attention_heads:
            problems.append(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}")
        if self.compute_dtype not in _DTYPES:
            problems.append(f"compute_dtype={self.compute_dtype!r}: expected one of {sorted(_DTYPES)}")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)!r}: expected a positive integer")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name}={getattr(self, name)!r}: expected a value in [0, 1)")
        if problems:
            raise UnsupportedConfigError("unsupported BERT config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def dtype(self):
        """The jnp dtype of the matmuls."""
        return _DTYPES[self.compute_dtype]

    def replace(self, **changes) -> "BertConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_dict(cls, raw: Mapping[str, Any], source: str = "config.json") -> "BertConfig":
        """Builds a config from a parsed config.json, refusing what the encoder cannot run."""
        model_type = raw.get("model_type", "bert")
        if model_type != "bert":
            raise UnsupportedConfigError(f"{source}: model_type={model_type!r}, expected 'bert'")
        position_type = raw.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise UnsupportedConfigError(
                f"{source}: position_embedding_type={position_type!r}: only 'absolute' "
                "position embeddings are supported (no relative_key / relative_key_query)")
        if raw.get("is_decoder") or raw.get("add_cross_attention"):
            raise UnsupportedConfigError(f"{source}: decoder / cross-attention BERT is not supported")
        fields = {f.name for f in dataclasses.fields(cls)} - {"compute_dtype"}
        values = {k: raw[k] for k in fields if k in raw and raw[k] is not None}
        try:
            return cls(**values)
        except UnsupportedConfigError as e:
            raise UnsupportedConfigError(f"{source}: {e}") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> "BertConfig":
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no config.json; a Hugging Face BERT directory needs one") from None
        except json.JSONDecodeError as e:
            raise UnsupportedConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_dict(raw, source=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json that transformers.BertModel reads back as this encoder."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.pop("compute_dtype")
        out.update(model_type="bert", architectures=["BertModel"],
                   position_embedding_type="absolute", initializer_range=0.02)
        return out
