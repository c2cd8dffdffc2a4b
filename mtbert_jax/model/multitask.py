"""The multi-task model: the shared encoder, task-specific adapters and one head per task.

Called with a task name and that task's batch: padded (`batching.py`) or packed, several
examples per row (`packing.py`: the batch has `token_example`). Parameters:
`bert/...` is the shared encoder (Hugging Face names), `adapters_{task}/...` and
`heads_{task}/...` belong to one task, `pair_hidden/...` is shared by the pair heads.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtbert_jax.batch import (
    ATTENTION_MASK,
    EXAMPLE_IDS,
    EXAMPLE_START,
    INPUT_IDS,
    POSITION_IDS,
    SIDES,
    TOKEN_EXAMPLE,
    TOKEN_TYPE_IDS,
    is_packed,
    sides,
)
from mtbert_jax.batch import (
    check as check_batch,
)
from mtbert_jax.errors import CheckpointError
from mtbert_jax.model.adapters import TaskAdapter
from mtbert_jax.model.bert_config import BertConfig
from mtbert_jax.model.config import ModelConfig
from mtbert_jax.model.dropout import TokenIds, token_ids
from mtbert_jax.model.encoder import BertModel, attention_bias, gelu, packed_attention_bias
from mtbert_jax.model.heads import (
    COSINE_SCALE,
    STS_MAX,
    CosineHead,
    LinearHead,
    cosine,
    pair_features,
    pool,
    pool_packed,
)
from mtbert_jax.tasks import REGRESSION, TASKS

Array = jax.Array


def dropout_token_ids(batch: Mapping[str, Array], suffix: str = "") -> Optional[TokenIds]:
    """Each token's (example id, position in its example) for dropout and SMART's noise, or
    None when the batch has no example ids: the same for a packed and a padded batch."""
    example_ids = batch.get(EXAMPLE_IDS)
    if example_ids is None:
        return None
    if not is_packed(batch):
        return token_ids(example_ids, batch[INPUT_IDS + suffix].shape[-1])
    slot = batch[TOKEN_EXAMPLE + suffix]
    return TokenIds(example_ids[jnp.maximum(slot, 0)], batch[POSITION_IDS + suffix])


class TaskOutput(NamedTuple):
    prediction: Array  # sentiment: [batch, classes] logits; quora: [batch] logit; sts: [batch] score
    embeddings: tuple[Array, ...]  # pooled vectors [batch, hidden]: (joint,) or (u, v)


class MultiTaskModel(nn.Module):
    bert_config: BertConfig
    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.bert = BertModel(self.bert_config)
        if cfg.adapter != "none":
            self.adapters = {t: TaskAdapter(self.bert_config, cfg) for t in cfg.tasks}
        heads = {}
        for task in cfg.tasks:
            spec = TASKS[task]
            if not spec.is_pair:
                heads[task] = LinearHead(spec.num_outputs, cfg.head_dropout)
            elif cfg.pair_head(task) == "cosine":
                heads[task] = CosineHead()
            elif cfg.pair_head(task) == "bi_cosine":
                continue  # no parameters
            else:
                heads[task] = LinearHead(1, cfg.head_dropout)
        self.heads = heads
        if cfg.shared_pair_hidden:
            self.pair_hidden = nn.Dense(self.bert_config.hidden_size,
                                        kernel_init=nn.initializers.normal(0.02))

    def sentence_vector(self, task: str, batch: Mapping[str, Array], suffix: str = "",
                        deterministic: bool = True, perturbation: Optional[Array] = None) -> Array:
        """One side of the batch (suffix "" or "_b") through the encoder, with the task's
        adapters -> [examples, hidden].

        `perturbation` ([rows, seq, hidden]) is added to the embedding-layer output (SMART).
        Dropout masks depend on each token's example and position only (model/dropout.py).
        """
        input_ids, types = batch[INPUT_IDS + suffix], batch[TOKEN_TYPE_IDS + suffix]
        ids = dropout_token_ids(batch, suffix)
        if is_packed(batch):
            slot = batch[TOKEN_EXAMPLE + suffix]
            bias, positions = packed_attention_bias(slot), batch[POSITION_IDS + suffix]
        else:
            mask = batch[ATTENTION_MASK + suffix]
            bias, positions = attention_bias(mask), None
        x = self.bert.embed(input_ids, types, deterministic, ids, positions)
        if perturbation is not None:
            x = x + perturbation.astype(x.dtype)
        adapter = self.adapters[task] if self.config.adapter != "none" else None
        residual_fn = None
        if adapter is not None and adapter.has_residual:
            residual_fn = lambda layer, h: adapter.residual(layer, h, bias, deterministic, ids)  # noqa: E731
        sequence = self.bert.encode(x, None, deterministic, residual_fn, ids, bias=bias)
        if adapter is not None:
            sequence = adapter.top(sequence, bias, deterministic, ids)
        if is_packed(batch):
            return pool_packed(self.config.pooling, sequence, slot, batch[EXAMPLE_START + suffix], self.bert.pool)
        return pool(self.config.pooling, sequence, mask, self.bert.pool)

    def __call__(self, task: str, batch: Mapping[str, Array], deterministic: bool = True,
                 perturbations: Optional[Sequence[Array]] = None) -> TaskOutput:
        if task not in self.config.tasks:
            raise KeyError(f"task {task!r}: this model has {self.config.tasks}")
        check_batch(batch)  # while tracing: a misbuilt batch is named by its field, at no cost per step
        segments = sides(batch)
        example_ids = batch.get(EXAMPLE_IDS)  # [batch]: dropout per example (model/dropout.py)
        vectors = tuple(self.sentence_vector(task, batch, s, deterministic,
                                             None if perturbations is None else perturbations[k])
                        for k, s in enumerate(segments))
        if not TASKS[task].is_pair:
            return TaskOutput(self.heads[task](vectors[0], deterministic, example_ids), vectors)
        mode = self.config.pair_head(task)
        expected = 1 if mode == "cross" else 2
        if len(vectors) != expected:
            raise ValueError(f"{task}: pair head {mode!r} needs {expected} encoded sequence(s), "
                             f"the batch has {len(vectors)}; tokenize with pair_encoding="
                             f"{self.config.pair_encoding(task)!r}")
        if mode == "bi_cosine":
            c = cosine(*vectors)
            return TaskOutput(STS_MAX / 2 * (1 + c) if TASKS[task].kind is REGRESSION else COSINE_SCALE * c,
                              vectors)
        head = self.heads[task]
        if mode == "cosine":
            score = head(*vectors)  # 20 cos(W u, W v)
        else:
            x = vectors[0] if mode == "cross" else pair_features(mode, *vectors)
            if self.config.shared_pair_hidden:
                x = gelu(self.pair_hidden(x))
            score = head(x, deterministic, example_ids)[:, 0]
        if TASKS[task].kind is REGRESSION and mode == "cosine":
            score = STS_MAX * jax.nn.sigmoid(score)
        return TaskOutput(score, vectors)

    def all_tasks(self, batches: Mapping[str, Mapping[str, Array]]) -> dict[str, TaskOutput]:
        """Every task on its batch: what `init` calls so that every head and adapter exists.

        The pooler is created even when the pooling does not use it, so the encoder's
        parameters always match (and export to) a Hugging Face BertModel (MPNetModel).
        """
        outputs = {task: self(task, batches[task]) for task in self.config.tasks}
        if self.config.pooling != "pooler":
            self.bert.pool(jnp.zeros((1, 1, self.bert_config.hidden_size), self.bert_config.dtype))
        return outputs


def example_batch(config: ModelConfig, task: str, batch_size: int = 2, seq_len: int = 8) -> dict:
    """A batch of the right structure for `task` (for initialisation and tests)."""
    segments = 2 if config.pair_encoding(task) == "bi" else 1
    batch = {}
    for s in SIDES[:segments]:
        batch |= {INPUT_IDS + s: np.ones((batch_size, seq_len), np.int32),
                  TOKEN_TYPE_IDS + s: np.zeros((batch_size, seq_len), np.int32),
                  ATTENTION_MASK + s: np.ones((batch_size, seq_len), np.int32)}
    return batch


def init_model(bert_config: BertConfig, config: ModelConfig, rng: Array,
               bert_params: Optional[Mapping] = None) -> tuple[MultiTaskModel, dict]:
    """Builds the model and its parameters; `bert_params` (a converted checkpoint) replace
    the randomly initialised encoder."""
    model = MultiTaskModel(bert_config, config)
    batches = {t: example_batch(config, t) for t in config.tasks}
    params = jax.jit(lambda key: model.init(key, batches, method=MultiTaskModel.all_tasks))(rng)["params"]
    params = dict(params)
    if bert_params is not None:
        expected = jax.tree_util.tree_map(jnp.shape, params["bert"])
        given = jax.tree_util.tree_map(jnp.shape, dict(bert_params))
        if expected != given:
            raise CheckpointError("the encoder parameters do not match the model's BertConfig")
        params["bert"] = jax.tree_util.tree_map(jnp.asarray, dict(bert_params))
    return model, params
