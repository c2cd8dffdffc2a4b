"""The operations of a MiniLM layer's forward pass, one at a time: XLA:CPU against PyTorch.

Where evaluation's time goes and which operations trail PyTorch's: each operation of an encoder
layer (the dense products, the exact GELU, LayerNorm, the masked softmax and the two batched
attention products) on 8,192 tokens (64 rows of 128, MiniLM's hidden 384, 12 heads), jitted on
its own, against the same torch operation under inference_mode; the attention products also
with rows of 64 and 32 at the same tokens. Median of repeats, float32, both in this process
(torch on as many threads as the machine's cores).

python benchmarks/forward_ops.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import math

from benchmarks import common

TOKENS, HIDDEN, INTERMEDIATE, HEADS = 8192, 384, 1536, 12


def cases(rng):
    """(name, jitted op, its arguments, torch op, its arguments, matmul FLOPs or None) per case."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import torch.nn.functional as F

    def arrays(**shapes):
        out = {k: rng.standard_normal(s).astype(np.float32) * (0.05 if k.startswith("w") else 1.0)
               for k, s in shapes.items()}
        return {k: jnp.asarray(v) for k, v in out.items()}, {k: torch.from_numpy(v) for k, v in out.items()}

    def gelu(u):
        return 0.5 * u * (1 + jax.lax.erf(u / math.sqrt(2)))

    def layer_norm(x, g, b):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) * jax.lax.rsqrt(v + 1e-12) * g + b

    j, t = arrays(x=(TOKENS, HIDDEN), u=(TOKENS, INTERMEDIATE), w1=(HIDDEN, INTERMEDIATE),
                  w2=(INTERMEDIATE, HIDDEN), wq=(HIDDEN, HIDDEN), g=(HIDDEN,), b=(HIDDEN,))
    wide, square = 2 * TOKENS * HIDDEN * INTERMEDIATE, 2 * TOKENS * HIDDEN * HIDDEN
    yield "dense 384 -> 1536", jax.jit(jnp.matmul), (j["x"], j["w1"]), torch.matmul, (t["x"], t["w1"]), wide
    yield "dense 1536 -> 384", jax.jit(jnp.matmul), (j["u"], j["w2"]), torch.matmul, (t["u"], t["w2"]), wide
    yield "dense 384 -> 384", jax.jit(jnp.matmul), (j["x"], j["wq"]), torch.matmul, (t["x"], t["wq"]), square
    yield "GELU (erf) [8192, 1536]", jax.jit(gelu), (j["u"],), F.gelu, (t["u"],), None
    yield ("dense 384 -> 1536 + GELU", jax.jit(lambda x, w: gelu(x @ w)), (j["x"], j["w1"]),
           lambda x, w: F.gelu(x @ w), (t["x"], t["w1"]), wide)
    yield ("LayerNorm [8192, 384]", jax.jit(layer_norm), (j["x"], j["g"], j["b"]),
           lambda x, g, b: F.layer_norm(x, (HIDDEN,), g, b, 1e-12), (t["x"], t["g"], t["b"]), None)
    for seq in (128, 64, 32):
        rows, head_dim = TOKENS // seq, HIDDEN // HEADS
        j, t = arrays(q=(rows, HEADS, seq, head_dim), p=(rows, HEADS, seq, seq), bias=(rows, 1, seq, seq))
        products = 2 * rows * HEADS * seq * seq * head_dim
        yield (f"scores q k^T, rows of {seq}", jax.jit(lambda q: jnp.einsum("bhqd,bhkd->bhqk", q, q)), (j["q"],),
               lambda q: q @ q.transpose(-1, -2), (t["q"],), products)
        yield (f"context p v, rows of {seq}", jax.jit(lambda p, v: jnp.einsum("bhqk,bhkd->bhqd", p, v)),
               (j["p"], j["q"]), torch.matmul, (t["p"], t["q"]), products)
        yield (f"softmax(scores + mask), rows of {seq}", jax.jit(lambda s, b: jax.nn.softmax(s + b, -1)),
               (j["p"], j["bias"]), lambda s, b: torch.softmax(s + b, -1), (t["p"], t["bias"]), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    import jax
    import numpy as np
    import torch

    torch.set_num_threads(common.machine()["cpu_cores"])
    rows = []
    with torch.inference_mode():
        for name, ours, ours_args, ref, ref_args, flops in cases(np.random.default_rng(0)):
            ours_ms = common.median_seconds(lambda: jax.block_until_ready(ours(*ours_args)), 2, args.repeats)[0] * 1e3
            ref_ms = common.median_seconds(lambda: ref(*ref_args), 2, args.repeats)[0] * 1e3
            rows.append({"operation": name, "ours_ms": ours_ms, "torch_ms": ref_ms, "ratio": ref_ms / ours_ms,
                         "ours_gflops": flops / ours_ms / 1e6 if flops else None,
                         "torch_gflops": flops / ref_ms / 1e6 if flops else None})
    common.print_table([("operation", "operation", "s"), ("ours_ms", "XLA ms", ".2f"), ("torch_ms", "torch ms", ".2f"),
                        ("ratio", "ours / torch speed", ".2f"), ("ours_gflops", "XLA GFLOP/s", ".0f"),
                        ("torch_gflops", "torch GFLOP/s", ".0f")], rows)
    common.print_json("forward_ops", {"tokens": TOKENS, "results": rows}, common.machine())


if __name__ == "__main__":
    main()
