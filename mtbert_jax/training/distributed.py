"""Devices and processes: per-process batch shards, per-device splits (forming the job:
mtbert_jax/run/cluster.py)."""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import numpy as np

from mtbert_jax.batch import TOKEN_EXAMPLE, WEIGHTS
from mtbert_jax.errors import ConfigError

PyTree = Any


def global_batch_divisor() -> int:
    """Batch sizes must divide by this: every device of every process gets equal rows."""
    return jax.device_count()


def process_shard(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's rows of a global batch (each process reads its own slice)."""
    count, index = jax.process_count(), jax.process_index()
    for k, v in batch.items():  # packed batches: rows and examples both split (data/packing.py)
        if v.shape[0] % count:
            raise ConfigError(f"a batch's {k} has {v.shape[0]} rows: they do not split over {count} processes")
    return {k: v[index * (v.shape[0] // count):(index + 1) * (v.shape[0] // count)] for k, v in batch.items()}


def split_for_devices(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """[rows, ...] -> [local devices, rows / devices, ...]."""
    devices = jax.local_device_count()
    for k, v in batch.items():
        if v.shape[0] % devices:
            raise ConfigError(f"a batch's {k} has {v.shape[0]} rows per process: they do not split over "
                              f"{devices} local devices")
    check_packed_shards(batch, devices)
    return {k: v.reshape((devices, v.shape[0] // devices) + v.shape[1:]) for k, v in batch.items()}


def check_packed_shards(batch: Mapping[str, np.ndarray], parts: int) -> None:
    """A packed batch split into `parts` must have been packed in (a multiple of) that many
    shards: each part's token slots index its own examples (data/packing.py)."""
    if TOKEN_EXAMPLE not in batch:
        return
    per_part = batch[WEIGHTS].shape[0] // parts
    if int(batch[TOKEN_EXAMPLE].max(initial=-1)) >= per_part:
        raise ConfigError(f"a packed batch split over {parts} devices was packed for fewer shards: "
                          f"pack it with shards={parts} (MultiTaskLoader / BatchLayout.batcher)")


@functools.lru_cache(maxsize=None)
def _device_sharding() -> jax.sharding.NamedSharding:
    """A leading axis split over this process's devices (what pmap takes)."""
    mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()), ("devices",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("devices"))


def to_devices(batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """[rows, ...] host arrays -> [local devices, rows / devices, ...] on the devices: a pmapped
    step then starts without a transfer (about 10x less dispatch time than from numpy)."""
    return jax.device_put(split_for_devices(batch), _device_sharding())


def replicate(tree: PyTree) -> PyTree:
    """A copy per local device, stacked on a leading device axis (what pmap takes)."""
    devices, sharding = jax.local_devices(), _device_sharding()
    return jax.tree_util.tree_map(
        lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (len(devices),) + np.shape(x)), sharding),
        tree)


def unreplicate(tree: PyTree) -> PyTree:
    """The first local replica, on its device (no gather over the devices)."""
    return jax.tree_util.tree_map(lambda x: jax.lax.squeeze(x.addressable_shards[0].data, (0,)), tree)


def fetch_replica(tree: PyTree) -> PyTree:
    """The first local replica as host (numpy) arrays: one transfer per leaf, from one device."""
    shards = jax.device_get(jax.tree_util.tree_map(lambda x: x.addressable_shards[0].data, tree))
    return jax.tree_util.tree_map(lambda x: x[0], shards)
