"""FLOP counts of the encoder and model FLOPs utilisation (MFU) against a device's datasheet peak.

One definition for the training log (model TFLOP/s and MFU per logging window) and the benchmarks
(benchmarks/train_step.py, accelerator_check.py).

What is counted: the encoder's matmuls, 2 FLOPs per multiply-add, on the shapes the device runs:
a padded batch's [rows, seq] arrays, a packed batch's [rows, row length] arrays (its
block-diagonal attention is computed densely, so the whole row counts). Padding therefore counts
as work; `padding_efficiency` in the log says how much of it was padding. Not counted: embedding
gathers, LayerNorm, softmax, GELU, adapters and task heads (each well under 1% of bert-base's
matmuls at seq 128), and any recomputation. Nothing here imports jax at module level, so the
benchmarks' parent processes, which must not start jax, can import it.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from mtbert_jax.batch import ATTENTION_MASK, EXAMPLE_START, INPUT_IDS, SIDES, TOKEN_EXAMPLE

# Dense peak throughput (FLOP/s) per jax device, by fragment of jax's `device_kind`; the first
# fragment found in the kind wins, so the PCIe and NVL parts (slower than SXM) come before the bare
# names, "TPU v5 lite" before "TPU v5", and "TPU v4 lite" before "TPU v4".
#
# NVIDIA: the H100, H200 and A100 datasheets; dense is half the "with sparsity" figure. "float32"
# is the TF32 tensor-core peak: XLA multiplies float32 in TF32 on these GPUs by default (jax's
# default matmul precision). GH200 ("NVIDIA GH200 480GB") has the H100/H200 SXM compute and
# matches "H200"/"H100" by design.
#
# Google Cloud TPU: the system-architecture pages of v4, v5e, v5p and v6e (bf16 TFLOPS per chip:
# 275, 197, 459, 918). jax shows one device per chip on these (v4 and v5p join a chip's two
# TensorCores as one "megacore" device), so the chip's peak is the device's. "float32" is the
# bf16 peak: on TPUs jax's default matmul precision multiplies float32 in one bfloat16 pass.
# jax names v5e "TPU v5 lite", v5p "TPU v5", v6e "TPU v6 lite".
DEVICE_PEAKS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"float32": 378e12, "bfloat16": 756e12},
    "H100 NVL": {"float32": 417.5e12, "bfloat16": 835.5e12},
    "H200 NVL": {"float32": 417.5e12, "bfloat16": 835.5e12},
    "H100": {"float32": 494.7e12, "bfloat16": 989.4e12},
    "H200": {"float32": 494.7e12, "bfloat16": 989.4e12},
    "A100": {"float32": 156e12, "bfloat16": 312e12},
    "TPU v4 lite": {},  # v4i, an inference part with no published figure: unknown, not v4's
    "TPU v4": {"float32": 275e12, "bfloat16": 275e12},
    "TPU v5 lite": {"float32": 197e12, "bfloat16": 197e12},
    "TPU v5e": {"float32": 197e12, "bfloat16": 197e12},
    "TPU v5": {"float32": 459e12, "bfloat16": 459e12},  # v5p (jax's kind is "TPU v5"; "TPU v5p" matches too)
    "TPU v6 lite": {"float32": 918e12, "bfloat16": 918e12},
    "TPU v6e": {"float32": 918e12, "bfloat16": 918e12},
}

# A training step's cost in forwards: the backward takes the gradients of both the activations
# and the weights, each a matmul the size of the forward's.
FORWARD_AND_BACKWARD = 3.0


def _dims(shape: Any) -> tuple[int, int, int]:
    """(hidden, intermediate, layers) of a BertConfig or a dict with its field names."""
    get = shape.__getitem__ if isinstance(shape, Mapping) else lambda name: getattr(shape, name)
    return int(get("hidden_size")), int(get("intermediate_size")), int(get("num_hidden_layers"))


def encoder_matmul_flops(shape: Any, batch: int, seq: int, pooled: Optional[int] = None) -> float:
    """Forward matmul FLOPs of the encoder plus pooler on [batch, seq] tokens (2 per multiply-add):
    Q, K, V, output projections and the feed-forward pair per layer, the two attention products
    (scores and weighted values, over all seq x seq pairs), and the pooler's dense layer on
    `pooled` vectors (default: one per row).

    shape: a BertConfig, or a dict with hidden_size, intermediate_size, num_hidden_layers."""
    h, i, layers = _dims(shape)
    tokens = batch * seq
    per_layer = 2 * tokens * (4 * h * h + 2 * h * i) + 2 * 2 * batch * seq * seq * h
    return float(layers * per_layer + 2 * (batch if pooled is None else pooled) * h * h)


def train_step_flops(shape: Any, batch: int, seq: int) -> float:
    """Matmul FLOPs of one training step on [batch, seq]: the forward and a backward of twice its cost."""
    return FORWARD_AND_BACKWARD * encoder_matmul_flops(shape, batch, seq)


def batch_matmul_flops(shape: Any, batch: Mapping[str, Any]) -> float:
    """Forward matmul FLOPs of the encoder over one task batch, every side (a bi-encoded pair
    has two): [rows, seq] from each side's input_ids, whether padded ([rows, bucket length]) or
    packed ([rows, row length]); the pooler on each example slot. Reads shapes only, so host
    (numpy) and device arrays alike cost nothing."""
    total = 0.0
    for side in SIDES:
        if INPUT_IDS + side not in batch:
            continue
        rows, seq = np.shape(batch[INPUT_IDS + side])
        slots = np.shape(batch[EXAMPLE_START + side])[0] if TOKEN_EXAMPLE + side in batch else rows
        total += encoder_matmul_flops(shape, rows, seq, pooled=slots)
    return total


def step_flops(shape: Any, batches: Mapping[str, Mapping[str, Any]],
               passes: float = FORWARD_AND_BACKWARD) -> float:
    """Model FLOPs of one training step on `batches` ({task: batch}, the global batch of every
    process): each task's forward matmuls times `passes`, the step's cost in forwards:
    3 (FORWARD_AND_BACKWARD) for a plain step; 1 when the encoder is frozen (its forward only,
    no gradient through it); an objective with extra forwards multiplies (R-Drop's two
    forwards: 6). MFU conventionally counts the plain step's 3 whatever the method does extra."""
    return passes * sum(batch_matmul_flops(shape, b) for b in batches.values())


def batch_tokens(batch: Mapping[str, Any]) -> tuple[int, int]:
    """(real tokens, tokens the device computes) of one task batch, every side. Real: a padded
    batch's attention_mask ones, a packed batch's tokens that belong to an example
    (token_example >= 0); computed: the arrays' rows x seq. Reads the values: pass host arrays
    (the loader's, before they go to the devices), or it waits for the device."""
    real = computed = 0
    for side in SIDES:
        if INPUT_IDS + side not in batch:
            continue
        rows, seq = np.shape(batch[INPUT_IDS + side])
        computed += rows * seq
        if TOKEN_EXAMPLE + side in batch:
            real += int((np.asarray(batch[TOKEN_EXAMPLE + side]) >= 0).sum())
        else:
            real += int(np.asarray(batch[ATTENTION_MASK + side]).sum())
    return real, computed


def datasheet_peak_flops(device_kind: str, dtype: str) -> Optional[float]:
    """The datasheet peak FLOP/s of one device of `device_kind` (jax's, e.g. "NVIDIA H100 80GB
    HBM3", "TPU v5 lite") multiplying in `dtype` ("float32", "bfloat16"), from DEVICE_PEAKS; None
    where unknown (a CPU, another accelerator, a dtype without a figure)."""
    for name, peaks in DEVICE_PEAKS.items():
        if name in device_kind:
            return peaks.get(dtype)
    return None


def device_peak_flops(dtype: str) -> Optional[float]:
    """The datasheet peak of jax's first device when it is a known accelerator, else None."""
    import jax

    device = jax.devices()[0]
    return None if device.platform == "cpu" else datasheet_peak_flops(device.device_kind, dtype)


def mfu(flops_per_second: float, device_kind: str, dtype: str, n_devices: int) -> Optional[float]:
    """Model FLOPs utilisation: achieved model FLOP/s over `n_devices` devices of `device_kind`
    (all of the run's, every process's) as a fraction of their datasheet peak in `dtype`. None
    where the peak is unknown (a CPU included), so that a log never shows a made-up figure."""
    peak = datasheet_peak_flops(device_kind, dtype)
    if not peak or n_devices <= 0:
        return None
    return flops_per_second / (peak * n_devices)
