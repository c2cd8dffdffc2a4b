"""One process of a two-process data-parallel run on localhost (CPU, gloo collectives).

python tests/helpers/two_process_steps.py PROCESS_ID NUM_PROCESSES PORT OUT.npz
Each process feeds its own half of every global batch; the step must agree across processes.
"""

import os
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
os.environ.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{sys.argv[3]}", JAX_NUM_PROCESSES=sys.argv[2],
                  JAX_PROCESS_ID=sys.argv[1])

from mtbert_jax import distributed  # noqa: E402

distributed.initialize_from_env()

import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from data_parallel_steps import TASKS, batches  # noqa: E402

from mtbert_jax.bert_config import BertConfig  # noqa: E402
from mtbert_jax.model_config import ModelConfig  # noqa: E402
from mtbert_jax.multitask_model import init_model  # noqa: E402
from mtbert_jax.optimizer import OptimizerConfig, make_optimizer  # noqa: E402
from mtbert_jax.train_step import StepRunner, TrainState  # noqa: E402


def main():
    assert jax.process_count() == int(sys.argv[2]) and jax.device_count() == jax.process_count()
    bert = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64)
    model, params = init_model(bert, ModelConfig(tasks=TASKS), jax.random.PRNGKey(0))
    optimizer = make_optimizer(OptimizerConfig(combiner="pcgrad", encoder_lr=1e-3), params, TASKS,
                               10, len(TASKS), jax.random.PRNGKey(1))
    runner = StepRunner(model, optimizer, TASKS, {}, 1, deterministic=True)
    state = distributed.replicate(TrainState(params, optimizer.tx.init(params), np.zeros((), np.int32)))
    for step in range(3):
        local = {t: distributed.split_for_devices(distributed.process_shard(b))
                 for t, b in batches(step).items()}
        state, _ = runner(state, local, step, jax.random.PRNGKey(2))
    flat = traverse_util.flatten_dict(jax.device_get(distributed.unreplicate(state).params), sep="/")
    np.savez(sys.argv[4], **flat)


if __name__ == "__main__":
    main()
