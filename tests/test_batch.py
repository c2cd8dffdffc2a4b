"""The batch layout (mtbert_jax/batch.py): what the pipeline makes passes its check; a batch
that breaks it is refused naming the field."""

from __future__ import annotations

import numpy as np
import pytest

from mtbert_jax import batch as layout
from mtbert_jax.data.packing import BatchLayout
from mtbert_jax.data.tokenized import Segments, TaskData
from mtbert_jax.synthetic import synthetic_batch


def _data(n=12, sides=1, seed=0):
    rng = np.random.default_rng(seed)

    def side():
        lengths = rng.integers(2, 20, size=n)
        return Segments.from_lists([rng.integers(5, 100, size=k).astype(np.int32) for k in lengths],
                                   [np.zeros(k, np.int32) for k in lengths])

    return TaskData("quora", "train", np.asarray([f"r{i}" for i in range(n)]),
                    rng.integers(0, 2, size=n).astype(np.int32), tuple(side() for _ in range(sides)), 0, [])


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("sides", [1, 2])
def test_pipeline_batches_fit_the_layout(packing, sides):
    batcher = BatchLayout((16, 32), packing).batcher(_data(sides=sides), 4)
    for batch in batcher.by_length():
        layout.check(batch)
        assert layout.is_packed(batch) == packing
        assert layout.sides(batch) == list(layout.SIDES[:sides])
        assert layout.INDEX not in layout.for_devices(batch)
        assert set(layout.model_inputs(batch)) <= {f + s for f in layout.MODEL_INPUTS for s in layout.SIDES}
        assert layout.LABELS not in layout.model_inputs(batch)


def test_a_broken_batch_is_named_by_its_field():
    batch = synthetic_batch("quora", 4, 8, np.random.default_rng(0), pair_encoding="bi")
    layout.check(batch)
    for broken, field in [({k: v for k, v in batch.items() if k != "attention_mask_b"}, "attention_mask_b"),
                          ({**batch, "token_type_ids": batch["token_type_ids"][:, :5]}, "token_type_ids"),
                          ({**batch, "labels": batch["labels"][:3]}, "labels"),
                          ({k: v for k, v in batch.items() if not k.startswith("input_ids")}, "input_ids")]:
        with pytest.raises(ValueError, match=field):
            layout.check(broken)
