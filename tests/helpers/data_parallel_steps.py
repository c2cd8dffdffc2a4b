"""Runs a few PCGrad train steps of a tiny model on N fake CPU devices; saves the parameters.

python tests/helpers/data_parallel_steps.py DEVICES OUT.npz [ACCUMULATION]
Run as a separate process: the device count must be set before JAX starts its backend.
"""

import sys

import jax
import numpy as np
from flax import traverse_util

from mtbert_jax import distributed
from mtbert_jax.bert_config import BertConfig
from mtbert_jax.model_config import ModelConfig
from mtbert_jax.multitask_model import init_model
from mtbert_jax.optimizer import OptimizerConfig, make_optimizer
from mtbert_jax.train_step import StepRunner, TrainState

TASKS = ("sst", "quora", "sts")


def batches(step, rows=8, seq=16):
    rng = np.random.default_rng(step)
    out = {}
    for task in TASKS:
        lengths = rng.integers(3, seq + 1, size=rows)
        mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
        out[task] = {"input_ids": rng.integers(5, 60, size=(rows, seq)).astype(np.int32) * mask,
                     "token_type_ids": np.zeros((rows, seq), np.int32), "attention_mask": mask,
                     "labels": (rng.uniform(0, 5, rows) if task == "sts" else rng.integers(0, 2, rows)
                                ).astype(np.float32 if task == "sts" else np.int32),
                     "weights": (np.arange(rows) < rows - 1).astype(np.float32)}  # one filler row
    return out


def main():
    devices, out_path = int(sys.argv[1]), sys.argv[2]
    jax.config.update("jax_num_cpu_devices", devices)  # before anything starts the backend
    accumulation = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    assert jax.local_device_count() == devices, jax.devices()
    bert = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64)
    model, params = init_model(bert, ModelConfig(tasks=TASKS), jax.random.PRNGKey(0))
    optimizer = make_optimizer(OptimizerConfig(combiner="pcgrad", encoder_lr=1e-3), params, TASKS,
                               10, len(TASKS), jax.random.PRNGKey(1))
    runner = StepRunner(model, optimizer, TASKS, {}, accumulation, deterministic=True)
    state = distributed.replicate(TrainState(params, optimizer.tx.init(params), np.zeros((), np.int32)))
    for step in range(3):
        sharded = {t: distributed.split_for_devices(b) for t, b in batches(step).items()}
        state, _ = runner(state, sharded, step, jax.random.PRNGKey(2))
    flat = traverse_util.flatten_dict(jax.device_get(distributed.unreplicate(state).params), sep="/")
    np.savez(out_path, **flat)


if __name__ == "__main__":
    main()
