"""One process of a two-process data-parallel run on localhost (CPU, gloo collectives).

python tests/training/two_process_steps.py PROCESS_ID NUM_PROCESSES PORT OUT.npz [packed]
Each process feeds its own half of every global batch; the step must agree across processes.
"""

import os
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
os.environ.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{sys.argv[3]}", JAX_NUM_PROCESSES=sys.argv[2],
                  JAX_PROCESS_ID=sys.argv[1])

from mtbert_jax.run import cluster  # noqa: E402
from mtbert_jax.training import distributed  # noqa: E402

cluster.join()

import numpy as np  # noqa: E402

from data_parallel_steps import run_steps  # noqa: E402  (this script's own folder is on sys.path)


def main():
    assert jax.process_count() == int(sys.argv[2]) and jax.device_count() == jax.process_count()
    packing = len(sys.argv) > 5 and sys.argv[5] == "packed"
    np.savez(sys.argv[4], **run_steps(in_this_process=distributed.process_shard, packing=packing))


if __name__ == "__main__":
    main()
