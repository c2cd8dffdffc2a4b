"""Runs a few PCGrad train steps of a tiny model on N fake CPU devices; saves the parameters.

python tests/training/data_parallel_steps.py DEVICES OUT.npz [ACCUMULATION] [mnrl|plain] [packed]
With `mnrl`, Quora and STS have bi-encoder heads and MNRL (in-batch negatives over the global batch).
With `packed`, the same examples come packed (data/packing.py), each device's and micro-batch's
share packed on its own.
Run as a separate process: the device count must be set before JAX starts its backend.
two_process_steps.py runs the same steps on two processes.
"""

import sys

import jax
import numpy as np
from flax import traverse_util

from mtbert_jax.data.packing import PackedBatcher
from mtbert_jax.data.tokenized import Segments, TaskData
from mtbert_jax.model.config import ModelConfig
from mtbert_jax.model.multitask import init_model
from mtbert_jax.synthetic import synthetic_batch, tiny_bert_config
from mtbert_jax.training import distributed
from mtbert_jax.training.objectives import MnrlConfig, ObjectiveConfig
from mtbert_jax.training.optimizer import Optimizer, OptimizerConfig
from mtbert_jax.training.step import StepRunner, TrainState

TASKS = ("sst", "quora", "sts")


def model_config(mnrl: bool) -> ModelConfig:
    heads = {"quora": "bi_concat", "sts": "bi_concat"} if mnrl else {}
    return ModelConfig(tasks=TASKS, pair_heads=heads)


def batches(step, rows=8, seq=16, mnrl=False):
    rng = np.random.default_rng(step)
    return {task: synthetic_batch(task, rows, seq, rng, filler_rows=1, pair_encoding=model_config(mnrl).pair_encoding(task))
            for task in TASKS}


def packed(task: str, batch: dict, shards: int) -> dict:
    """The padded batch's examples as a packed batch split into `shards` parts."""
    sides = [s for s in ("", "_b") if "input_ids" + s in batch]
    segments = tuple(Segments.from_lists([ids[m > 0] for ids, m in zip(batch["input_ids" + s], batch["attention_mask" + s])],
                                         [t[m > 0] for t, m in zip(batch["token_type_ids" + s], batch["attention_mask" + s])])
                     for s in sides)
    rows = len(batch["weights"])
    data = TaskData(task, "train", np.arange(rows).astype(str), batch["labels"], segments, 0, [])
    real = np.flatnonzero(batch["weights"] > 0)
    out = PackedBatcher(data, rows, batch["input_ids"].shape[1], unique_texts=len(sides) > 1,
                        shards=shards).make_batch(real)
    return {k: v for k, v in out.items() if k != "index"}


def run_steps(accumulation: int = 1, in_this_process=lambda batch: batch, mnrl: bool = False,
              packing: bool = False) -> dict:
    """Three steps from the same start; `in_this_process` picks this process's rows."""
    model, params = init_model(tiny_bert_config(), model_config(mnrl), jax.random.PRNGKey(0))
    optimizer = Optimizer(OptimizerConfig(combiner="pcgrad", encoder_lr=1e-3), params, TASKS,
                          10, len(TASKS), jax.random.PRNGKey(1))
    objective = ObjectiveConfig(mnrl=MnrlConfig(tasks=("quora", "sts"), sts_threshold=2.5) if mnrl else MnrlConfig())
    runner = StepRunner(model, optimizer, TASKS, {}, accumulation, objective=objective)  # dropout on
    state = distributed.replicate(TrainState.create(params, optimizer))
    shards = jax.device_count() * accumulation
    for step in range(3):
        step_batches = batches(step, mnrl=mnrl)
        if packing:
            step_batches = {t: packed(t, b, shards) for t, b in step_batches.items()}
        sharded = {t: distributed.split_for_devices(in_this_process(b)) for t, b in step_batches.items()}
        state, _ = runner(state, sharded, jax.random.PRNGKey(2))
    return traverse_util.flatten_dict(jax.device_get(distributed.unreplicate(state).params), sep="/")


def main():
    devices, out_path = int(sys.argv[1]), sys.argv[2]
    jax.config.update("jax_num_cpu_devices", devices)  # before anything starts the backend
    accumulation = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    mnrl = len(sys.argv) > 4 and sys.argv[4] == "mnrl"
    packing = len(sys.argv) > 5 and sys.argv[5] == "packed"
    assert jax.local_device_count() == devices, jax.devices()
    np.savez(out_path, **run_steps(accumulation, mnrl=mnrl, packing=packing))


if __name__ == "__main__":
    main()
