"""The model's matrix products, forward and backward, in bfloat16 and float32.

For a dense layer and for the two attention products: autodiff with a bf16 result (what
nn.Dense(dtype=bfloat16) computes), autodiff with float32 accumulation, mtbert_jax's custom VJPs
(mtbert_jax/model/mixed_precision.py) and float32, with GFLOP/s against the plain bf16 product
([M, K] x [K, N] with float32 accumulation, XLA:CPU's fast form) measured in the same process.
Medians of 7 after one warm-up, in this one process (no PyTorch side: train_step.py has it).

python benchmarks/bf16_products.py
"""

from __future__ import annotations

from benchmarks import common

DENSE = [(2048, 384, 1536), (2048, 768, 3072)]  # tokens x in x out: MiniLM's and bert-base's FFN
ATTENTION = [(32, 12, 64, 32), (32, 12, 128, 64)]  # batch, heads, seq, head_dim


def main():
    import jax
    import jax.numpy as jnp

    from mtbert_jax.model import mixed_precision as mp

    bf16, f32 = jnp.bfloat16, jnp.float32
    key = jax.random.PRNGKey(0)

    def seconds(fn, *args):
        fn = jax.jit(fn)
        return common.median_seconds(lambda: jax.block_until_ready(fn(*args)), 1, 7)[0]

    m, k, n = 2048, 768, 3072
    a, b = jax.random.normal(key, (m, k)).astype(bf16), jax.random.normal(key, (k, n)).astype(bf16)
    limit = 2 * m * k * n / seconds(lambda a, b: jnp.dot(a, b, preferred_element_type=f32), a, b) / 1e9

    rows = []
    for m, k, n in DENSE:
        x, w = jax.random.normal(key, (m, k)).astype(bf16), jax.random.normal(key, (k, n)) * 0.02
        variants = {
            "autodiff, bf16 result": lambda x, w: jnp.dot(x, w.astype(bf16)).astype(f32),
            "autodiff, f32 accumulation": lambda x, w: jnp.dot(x, w.astype(bf16), preferred_element_type=f32),
            "custom VJP (ours)": mp.matmul,
            "float32": lambda x, w: jnp.dot(x.astype(f32), w),
        }
        for name, product in variants.items():
            grad = jax.grad(lambda x, w, p=product: jnp.sum(p(x, w) ** 2), argnums=(0, 1))
            s = seconds(grad, x, w)
            rows.append({"product": f"dense {m}x{k}x{n}", "variant": name, "ms": s * 1e3,
                         "gflops": 6 * m * k * n / s / 1e9})
    for batch, heads, seq, dim in ATTENTION:
        q = jax.random.normal(key, (batch, heads, seq, dim)).astype(bf16)
        kk, v = q + 1, q * 2

        def attention(scores_of, context_of, dtype):
            def f(q, k, v):
                p = jax.nn.softmax(scores_of(q.astype(dtype), k.astype(dtype)), -1).astype(dtype)
                return jnp.sum(context_of(p, v.astype(dtype)) ** 2)
            return f

        einsum = lambda spec: lambda a, b: jnp.einsum(spec, a, b, preferred_element_type=f32)  # noqa: E731
        variants = {
            "autodiff, f32 accumulation": attention(einsum("bhqd,bhkd->bhqk"), einsum("bhqk,bhkd->bhqd"), bf16),
            "custom VJP (ours)": attention(mp.matmul_nt, mp.matmul, bf16),
            "float32": attention(einsum("bhqd,bhkd->bhqk"), einsum("bhqk,bhkd->bhqd"), f32),
        }
        for name, f in variants.items():
            s = seconds(jax.grad(f, argnums=(0, 1, 2)), q, kk, v)
            rows.append({"product": f"attention {batch}x{heads}x{seq}x{dim}", "variant": name, "ms": s * 1e3,
                         "gflops": 3 * 2 * 2 * batch * heads * seq * seq * dim / s / 1e9})
    for r in rows:
        r["of_limit"] = r["gflops"] / limit
    common.print_table([("product", "product (fwd + bwd)", "s"), ("variant", "variant", "s"), ("ms", "ms", ".1f"),
                        ("gflops", "GFLOP/s", ".0f"), ("of_limit", "of plain bf16", ".2f")], rows)
    print(f"plain 2048 x 768 x 3072 bf16 product, float32 accumulation: {limit:.0f} GFLOP/s")
    common.print_json("bf16_products", {"plain_bf16_gflops": limit, "results": rows}, common.machine())


if __name__ == "__main__":
    main()
