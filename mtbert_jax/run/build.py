"""The model a run configuration describes: one builder for training, restoring a trained run and
comparing runs, with the compute dtype made concrete in one place."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax

from mtbert_jax.errors import ConfigError
from mtbert_jax.model.bert_config import BertConfig
from mtbert_jax.model.mixed_precision import resolve_compute_dtype
from mtbert_jax.model.multitask import MultiTaskModel, init_model
from mtbert_jax.run.config import RunConfig

CONCRETE_DTYPES = ("float32", "bfloat16")


def concrete_dtype(run: RunConfig, started_with: Optional[str] = None) -> tuple[RunConfig, str]:
    """(the run with compute_dtype made concrete, why). "auto": the dtype a resumed run started
    with (`started_with`, from its saved config), else bfloat16 where this machine multiplies it
    fast (a CPU with AVX-512 BF16 or AMX, a GPU, a TPU) and float32 elsewhere."""
    if run.compute_dtype in CONCRETE_DTYPES:
        return run, "as configured"
    if started_with in CONCRETE_DTYPES:
        dtype, why = started_with, "auto: as the run started"
    else:
        dtype, why = resolve_compute_dtype(run.compute_dtype)
    return dataclasses.replace(run, compute_dtype=dtype), why


def encoder_config(run: RunConfig, checkpoint_config: BertConfig) -> BertConfig:
    """The checkpoint's BertConfig as this run uses it: its compute dtype (concrete) and encoder
    dropout. ConfigError where the run asks what the checkpoint's encoder family cannot do."""
    if run.compute_dtype not in CONCRETE_DTYPES:
        raise ValueError(f"compute_dtype={run.compute_dtype!r}: make it concrete first (concrete_dtype)")
    check_family(run, checkpoint_config)
    return run.model.encoder_config(checkpoint_config.replace(compute_dtype=run.compute_dtype))


def check_family(run: RunConfig, checkpoint_config: BertConfig) -> None:
    """Refuses, in one line, what `run` asks of an encoder family that cannot do it: longer
    sequences than its positions hold."""
    family = checkpoint_config.family
    if run.max_length > checkpoint_config.max_positions:
        offset = checkpoint_config.position_offset
        raise ConfigError(f"max_length={run.max_length} is more than the checkpoint's max_position_embeddings="
                          f"{checkpoint_config.max_position_embeddings}"
                          + (f" less the {offset} rows before {family.model_type}'s first position" if offset else ""))


def build_model(run: RunConfig, bert_config: BertConfig) -> MultiTaskModel:
    return MultiTaskModel(bert_config, run.model)


def parameter_shapes(run: RunConfig, bert_config: BertConfig) -> dict:
    """The model's parameters as shapes (nothing computed), without the objective's extras."""
    return jax.eval_shape(lambda: init_model(bert_config, run.model, jax.random.PRNGKey(0))[1])
