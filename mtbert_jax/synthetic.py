"""Random models and batches for tests and benchmarks: a tiny encoder configuration and
synthetic batches of any task, in the layout the data pipeline produces."""

from __future__ import annotations

import numpy as np

from mtbert_jax.batch import ATTENTION_MASK, EXAMPLE_IDS, INPUT_IDS, LABELS, TOKEN_TYPE_IDS, WEIGHTS
from mtbert_jax.model.bert_config import BertConfig
from mtbert_jax.tasks import TASKS

# A 2-layer, hidden-32 encoder with a 60-token vocabulary: seconds to compile and run.
TINY_BERT = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=64)


def tiny_bert_config(**changes) -> BertConfig:
    return BertConfig(**{**TINY_BERT, **changes})


def synthetic_batch(task: str, rows: int, seq: int, rng: np.random.Generator, *,
                    pair_encoding: str = "cross", token_range: tuple[int, int] = (5, 60),
                    varied_lengths: bool = True, filler_rows: int = 0) -> dict[str, np.ndarray]:
    """A batch of `task`: random token ids (right-padded to `seq` with real lengths 3..seq when
    `varied_lengths`), labels of the task's kind, weight 0 on the last `filler_rows` rows.
    A cross-encoded pair marks its second half with token type 1; a bi-encoded pair has the
    `_b` arrays of its second sentence."""
    spec = TASKS[task]
    batch = {}
    for suffix in ("", "_b") if pair_encoding == "bi" and spec.is_pair else ("",):
        lengths = rng.integers(3, seq + 1, size=rows) if varied_lengths else np.full(rows, seq)
        mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
        types = np.zeros((rows, seq), np.int32)
        if spec.is_pair and pair_encoding == "cross":
            types[:, seq // 2:] = 1
        batch |= {INPUT_IDS + suffix: rng.integers(*token_range, size=(rows, seq)).astype(np.int32) * mask,
                  TOKEN_TYPE_IDS + suffix: types * mask, ATTENTION_MASK + suffix: mask}
    if spec.is_classification:
        batch[LABELS] = rng.integers(0, spec.num_classes, rows).astype(spec.kind.label_dtype)
    else:
        batch[LABELS] = rng.uniform(*spec.score_range, size=rows).astype(spec.kind.label_dtype)
    batch[WEIGHTS] = (np.arange(rows) < rows - filler_rows).astype(np.float32)
    batch[EXAMPLE_IDS] = np.arange(rows, dtype=np.int32)
    return batch
