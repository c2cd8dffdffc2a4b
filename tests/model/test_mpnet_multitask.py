"""Every pooling, pair head and adapter of the multi-task model on an MPNet encoder, packed as
padded (with dropout on), and every objective's loss (SMART, R-Drop, MNRL, distillation) finite
with finite gradients, the relative position bias trained."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from test_packed_model import CONFIGS, _both, _name
from test_packed_model import TASKS as PACKED_TASKS

from mtbert_jax.batch import TARGETS
from mtbert_jax.model.bert_config import BertConfig
from mtbert_jax.model.multitask import init_model
from mtbert_jax.training.objectives import DistillationConfig, MnrlConfig, ObjectiveConfig, make_objective
from mtbert_jax.training.rdrop import RDropConfig
from mtbert_jax.training.smart import SmartConfig

# test_packed_model's tiny encoder as an MPNet: 64 usable positions, dropout on.
DROPOUT = BertConfig.from_hf_dict({"model_type": "mpnet", "vocab_size": 60, "hidden_size": 32, "num_hidden_layers": 2,
                                   "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 66,
                                   "layer_norm_eps": 1e-5, "hidden_dropout_prob": 0.1,
                                   "attention_probs_dropout_prob": 0.1})


@pytest.mark.parametrize("config", CONFIGS, ids=_name)
def test_every_pooling_head_and_adapter_packs_as_it_pads_on_mpnet(config):
    """Packed rows (several examples, positions restarting, a bias from column differences)
    compute what padded batches do, with dropout on."""
    model, params = init_model(DROPOUT, config, jax.random.PRNGKey(0))
    # The tasks the config changes: a pair head's two pair tasks, else a sentence and a pair task.
    tasks = ("quora", "sts") if config.pair_head("quora") != "cross" else ("sst", "quora")
    for task in tasks:
        padded, packed = _both(config, task)
        outputs = [model.apply({"params": params}, task, b, deterministic=False, rngs={"dropout": jax.random.PRNGKey(5)})
                   for b in (padded, packed)]
        for a, b in zip(jax.tree_util.tree_leaves(outputs[0]), jax.tree_util.tree_leaves(outputs[1])):
            np.testing.assert_allclose(np.asarray(b)[:10], np.asarray(a)[:10], atol=1e-5, err_msg=task)


# A cross-encoder, a bi-encoder (MNRL) and an adapter inside the layers.
OBJECTIVE_CONFIGS = list({_name(c): c for c in CONFIGS if _name(c) in (
    "mean-cross-none", "mean-cosine-none", "mean-cross-pals")}.values())


@pytest.mark.parametrize("config", OBJECTIVE_CONFIGS, ids=_name)
def test_every_objective_trains_on_mpnet(config):
    """SMART (sst), R-Drop (quora), distillation (all) and, for bi-encoders, MNRL: a finite loss
    on a packed batch with filler slots, finite gradients, the relative position bias trained."""
    model, params = init_model(DROPOUT, config, jax.random.PRNGKey(0))
    bi = tuple(t for t in PACKED_TASKS if config.pair_encoding(t) == "bi")
    objective = ObjectiveConfig(smart=SmartConfig(tasks=("sst",)), rdrop=RDropConfig(tasks=("quora",)),
                                mnrl=MnrlConfig(tasks=bi), distillation=DistillationConfig(teachers=("a run",), weight=0.5))
    for task in PACKED_TASKS:
        _, packed = _both(config, task)
        slots = len(packed["weights"])
        packed[TARGETS] = {"sst": np.full((slots, 5), 0.2, np.float32), "quora": np.full(slots, 0.7, np.float32),
                           "sts": np.full(slots, 2.5, np.float32)}[task]  # what teachers' outputs stand for
        loss = make_objective(model, task, objective)
        (value, rows), grads = jax.value_and_grad(lambda p: loss(p, params, packed, jax.random.PRNGKey(1)),
                                                  has_aux=True)(params)
        assert np.isfinite(float(value)) and float(rows) == 10, task
        assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads)), task
        assert np.abs(np.asarray(grads["bert"]["encoder"]["relative_attention_bias"]["embedding"])).max() > 0, task
