"""A trained run restored for use: its typed configuration, model, parameters and tokenizer.

The configuration is rebuilt from the checkpoint's saved config (runs written before the
objective group moved still load), and parameters that do not fit the model it describes are
refused by name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from mtbert_jax.checkpoints.hf import resolve_checkpoint_dir
from mtbert_jax.checkpoints.tokenizer import BertTextTokenizer
from mtbert_jax.errors import CheckpointError, ConfigError
from mtbert_jax.evaluation.predict import make_predict
from mtbert_jax.model.bert_config import BertConfig
from mtbert_jax.model.multitask import MultiTaskModel
from mtbert_jax.run.build import build_model, concrete_dtype, encoder_config, parameter_shapes
from mtbert_jax.run.checkpointing import restore_trained
from mtbert_jax.run.config import RunConfig


@dataclasses.dataclass
class TrainedModel:
    run: RunConfig  # the run's configuration
    model: MultiTaskModel
    params: dict
    tokenizer: BertTextTokenizer
    step: int

    def __post_init__(self):
        self.predict_fn = make_predict(self.model)
        self.layout = self.run.layout()  # batches as in training: padded to buckets, or packed


def load_trained(workdir: str | Path, which: str = "best", symmetric_pairs: bool | None = None) -> TrainedModel:
    """Restores a run's config and parameters; refuses parameters that do not fit the model
    its config describes. `symmetric_pairs` overrides the run's model.symmetric_pairs (None:
    keep it)."""
    saved, params, step = restore_trained(workdir, which)
    params = {k: v for k, v in params.items() if not k.startswith("uncertainty_")}  # training only
    try:
        run = RunConfig.from_dict(saved)
    except ConfigError as e:
        raise CheckpointError(f"{workdir}: the saved config does not fit this code: {e}") from None
    if symmetric_pairs is not None:  # how to predict, not what was trained: the parameters fit either way
        run = dataclasses.replace(run, model=dataclasses.replace(run.model, symmetric_pairs=symmetric_pairs))
    source = resolve_checkpoint_dir(run.checkpoint)
    run, _ = concrete_dtype(run)  # saved configs hold the run's own dtype
    bert_config = encoder_config(run, BertConfig.from_json_file(source / "config.json"))
    expected = parameter_shapes(run, bert_config)
    shapes = lambda tree: jax.tree_util.tree_map(np.shape, tree)  # noqa: E731
    if shapes(expected) != shapes(params):
        missing = sorted(set(expected) - set(params))
        extra = sorted(set(params) - set(expected))
        raise CheckpointError(
            f"{workdir}: the checkpoint's parameters do not match the model its config describes "
            f"(in the model only: {missing or 'none'}; in the checkpoint only: {extra or 'none'}; "
            "otherwise shapes differ)")
    return TrainedModel(run, build_model(run, bert_config), params, BertTextTokenizer(source), step)
