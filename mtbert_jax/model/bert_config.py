"""The encoder's hyper-parameters, read from a Hugging Face config.json and validated.

One dataclass for every encoder family (model/families.py): `model_type` names the family, which
decides how config.json is read and written and what the encoder adds to BERT.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import jax.numpy as jnp

from mtbert_jax.errors import CheckpointError
from mtbert_jax.model.families import FAMILIES, EncoderFamily


class UnsupportedConfigError(CheckpointError):
    """A config.json asks for something this encoder does not implement."""


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a post-LayerNorm BERT-family encoder (names as in config.json)."""

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
    # The encoder family (model/families.py): "bert" or "mpnet".
    model_type: str = "bert"
    # Buckets of a relative position bias shared by all layers (MPNet: 32; BERT: 0, none).
    relative_attention_num_buckets: int = 0
    # Not from config.json: the dtype matmuls run in. Parameters, LayerNorm and softmax
    # always stay float32.
    compute_dtype: str = "float32"

    def __post_init__(self):
        problems = []
        if self.model_type not in FAMILIES:
            raise UnsupportedConfigError(f"unsupported encoder config: model_type={self.model_type!r}, expected "
                                         f"one of {sorted(FAMILIES)}")
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
                     "intermediate_size", "max_position_embeddings"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)!r}: expected a positive integer")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name}={getattr(self, name)!r}: expected a value in [0, 1)")
        problems += self.family.check(self)
        if problems:
            raise UnsupportedConfigError(f"unsupported {self.model_type} config: " + "; ".join(problems))

    @property
    def family(self) -> EncoderFamily:
        return FAMILIES[self.model_type]

    @property
    def position_offset(self) -> int:
        """The position embedding row of each sequence's first token."""
        return self.family.position_offset

    @property
    def max_positions(self) -> int:
        """The longest sequence the position embeddings hold (MPNet: 2 fewer than its rows)."""
        return self.max_position_embeddings - self.position_offset

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
        if model_type not in FAMILIES:
            raise UnsupportedConfigError(f"{source}: model_type={model_type!r}, expected one of {sorted(FAMILIES)}")
        values, problems = FAMILIES[model_type].config_values(raw, source)
        if problems:
            raise UnsupportedConfigError(f"{source}: " + "; ".join(problems))
        try:
            return cls(**values)
        except UnsupportedConfigError as e:
            raise UnsupportedConfigError(f"{source}: {e}") from None
        except TypeError as e:  # a value of the wrong type, e.g. a string where a number belongs
            raise UnsupportedConfigError(f"{source}: {e}") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> "BertConfig":
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no config.json; a Hugging Face BERT or MPNet directory needs one") from None
        except json.JSONDecodeError as e:
            raise UnsupportedConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_dict(raw, source=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json that transformers reads back as this encoder (BertModel, MPNetModel)."""
        return self.family.hf_config(self)
