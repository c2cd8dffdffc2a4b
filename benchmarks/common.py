"""What the benchmark scripts share: model shapes, timing, the plain-matmul limit, the machine's
description, subprocess runs and the printed table + JSON line. FLOP counts and datasheet peaks
are the package's (mtbert_jax.training.flops), which the training log uses too.

Both sides of every comparison run in the same invocation, one after the other, each in its
own process (so peak resident memory is per side); ratios are what to compare, absolute
times vary with the machine's load.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

# Encoder shapes, as config.json keys: BERT's (model_type absent) have vocabulary 30,522, 512
# positions, 2 token types, as bert-base-uncased; MPNet's (model_type "mpnet") all-mpnet-base-v2's
# vocabulary of 30,527, 514 position rows (512 usable: its positions start at row 2), no token
# types and a 32-bucket relative position bias.
_MPNET = dict(model_type="mpnet", vocab_size=30527, max_position_embeddings=514, relative_attention_num_buckets=32)
SHAPES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "mpnet-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                       **_MPNET),
    # Seconds on a CPU: for checking that a script still runs (accelerator_check.py --quick).
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    "mpnet-tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **_MPNET),
}
_DIMS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def model_type(shape_name: str) -> str:
    """The encoder family of a shape: config.json's model_type ("bert" where the shape says none)."""
    return SHAPES[shape_name].get("model_type", "bert")


def bert_shape_like(shape_name: str) -> str | None:
    """The BERT shape with the same layers, widths and heads as another family's shape (None for
    a BERT shape, or where there is none): what PyTorch runs fastest, BertModel with SDPA."""
    if model_type(shape_name) == "bert":
        return None
    dims = {k: SHAPES[shape_name][k] for k in _DIMS}
    return next((name for name, s in SHAPES.items()
                 if model_type(name) == "bert" and {k: s[k] for k in _DIMS} == dims), None)


def max_sequence(shape_name: str) -> int:
    """The longest sequence a shape's position embeddings hold (MPNet: 2 fewer than its rows)."""
    from mtbert_jax.model.families import FAMILIES  # numpy only: no jax in a parent process

    shape = SHAPES[shape_name]
    return shape.get("max_position_embeddings", 512) - FAMILIES[model_type(shape_name)].position_offset


def median_seconds(fn: Callable[[], object], warmup: int, repeats: int) -> tuple[float, list[float]]:
    """Calls fn (which must block until its work is done) warmup + repeats times."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def peak_rss_mib() -> float:
    from mtbert_jax.run.metrics_log import peak_host_mib

    return peak_host_mib()


def torch_device() -> str:
    """"cuda" when PyTorch sees a GPU, with TF32 matmuls on: what XLA does with float32 there by
    default, and PyTorch's fastest float32 (its own default multiplies in full float32)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return "cuda"


def jax_matmul_gflops(n: int, dtype: str = "float32", repeats: int = 5) -> float:
    """GFLOP/s of one n x n x n matmul through XLA on jax's default device. In bfloat16 it
    accumulates into float32, as the model's products do: XLA:CPU's fast bf16 form (a bf16
    result runs at float32's speed there)."""
    import functools

    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.dtype(dtype))
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.dtype(dtype))
    mm = jax.jit(functools.partial(jnp.dot, preferred_element_type=jnp.float32))
    seconds, _ = median_seconds(lambda: mm(a, b).block_until_ready(), 2, repeats)
    return 2 * n ** 3 / seconds / 1e9


def torch_matmul_gflops(n: int, dtype: str = "float32", repeats: int = 5) -> float:
    import torch

    device = torch_device()
    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))

    def run():
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()

    seconds, _ = median_seconds(run, 2, repeats)
    return 2 * n ** 3 / seconds / 1e9


def machine() -> dict:
    """Where the numbers came from."""
    import jax

    info = {"platform": platform.platform(), "python": platform.python_version(),
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "cpu_flags": _cpu_flags(),
            "cpu": _cpu_model(), "cpu_cores": os.cpu_count(), "jax": jax.__version__,
            "jax_device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
            "jax_device_count": jax.device_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        info["torch"] = None
    return info


def _cpu_flags() -> str:
    """The vector extensions that decide matmul speed (AVX-512 and its BF16/VNNI parts, AMX)."""
    from mtbert_jax.model.mixed_precision import cpu_flags

    flags = cpu_flags()
    return " ".join(f for f in ("fma", "avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f in flags)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def side_environment() -> dict:
    """The environment of every side: glibc's malloc tunables where they apply (train.py and
    evaluate.py set them for themselves; PyTorch's large CPU buffers gain from them as well)."""
    from mtbert_jax.run import malloc_tunables

    return malloc_tunables.tuned_environment()


def run_side(script: str, args: Sequence[str], extra_env: dict | None = None) -> dict:
    """Runs `python script args` in a fresh process (both sides of a comparison get the same
    environment, see side_environment, plus extra_env); its last stdout line is a JSON object."""
    env = {**side_environment(), **(extra_env or {})}
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_table(columns: Sequence[tuple[str, str, str]], rows: Sequence[dict]) -> None:
    """columns: (key, header, format) e.g. ("ratio", "ours/torch", ".2f")."""
    cells = [[format(r[k], f) if r.get(k) is not None else "-" for k, _, f in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h, _) in enumerate(columns)]
    print("  ".join(h.rjust(w) for (_, h, _), w in zip(columns, widths)))
    for c in cells:
        print("  ".join(x.rjust(w) for x, w in zip(c, widths)))


def print_json(name: str, payload: dict, machine_info: dict) -> None:
    """The machine-readable result: one line, last on stdout."""
    print(json.dumps({"benchmark": name, "machine": machine_info, **payload}))
