"""bfloat16 matrix products whose backward pass stays on XLA:CPU's fast path.

XLA:CPU hands a bf16 x bf16 -> float32 product to YNNPACK, at about twice float32's rate on a
CPU with AVX-512 BF16, only when its left operand is row-major with the contracted axis last
([..., M, K]); a right operand of [..., K, N] or [..., N, K] is fine either way. Anything else
(a bf16 result, or a left operand read transposed) it converts to float32 first and multiplies
there. Autodiff's weight gradient x^T g reads x transposed, so a plain bf16 backward pass ran at
float32 speed (benchmarks/bf16_products.py, 2 cores of a CPU with AVX-512 BF16: 186 against 418
GFLOP/s for a 2048 x 768 x 3072 product).

So each product here has a custom VJP that writes every gradient as a product of that fast form,
first copying the one operand that needs it into transposed order (`transposed`), which costs
one pass over memory. Operands are bf16, every product accumulates and returns float32, and the
kernel stays a float32 parameter whose gradient is computed in float32 (not rounded to bf16).
GPUs and TPUs get the same gradients without the copies: there the transposed operand is read
in place.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
BF16 = jnp.bfloat16


def transposed(x: Array) -> Array:
    """x with its last two axes swapped, materialised in row-major order.

    A plain transpose does not survive as a copy: XLA folds it into the product that reads it,
    or gives it a transposed layout, and either way the product leaves the fast path. Splitting
    the last axis first (..., M, K) -> (..., M, K/f, f) and transposing that 3-D view is a real
    copy in XLA:CPU's row-major layout; the values are exactly x's transpose. The barrier keeps
    XLA from fusing x's producer (GELU, say) into the copy, which would compute it again.
    """
    *lead, m, k = x.shape
    # Split sizes measured on one core: 32 for wide matrices, 8 for attention's [.., 128, 128].
    f = next((f for f in ((32, 8, 4, 2) if k >= 512 else (8, 4, 2)) if k % f == 0), None)
    x = jax.lax.optimization_barrier(x)
    if f is None:  # an odd axis: correct, only the product is slower
        return jnp.swapaxes(x, -1, -2)
    n = len(lead)
    y = x.reshape(*lead, m, k // f, f)
    y = y.transpose(*range(n), n + 1, n + 2, n)
    return y.reshape(*lead, k, m)


def _nt(a: Array, b: Array) -> Array:
    """a [..., M, K] . b [..., N, K]^T -> [..., M, N] float32 (contracting both last axes)."""
    batch = tuple(range(a.ndim - 2))
    return jax.lax.dot_general(a, b, (((a.ndim - 1,), (b.ndim - 1,)), (batch, batch)),
                               preferred_element_type=jnp.float32)


def _nn(a: Array, b: Array) -> Array:
    """a [..., M, K] . b [..., K, N] -> [..., M, N] float32."""
    batch = tuple(range(a.ndim - 2))
    return jax.lax.dot_general(a, b, (((a.ndim - 1,), (b.ndim - 2,)), (batch, batch)),
                               preferred_element_type=jnp.float32)


def _tn(a: Array, b: Array) -> Array:
    """a [..., M, K]^T . b [..., M, N] -> [..., K, N] float32 (contracting both row axes). GPUs
    and TPUs read the transposed operand at full speed."""
    batch = tuple(range(a.ndim - 2))
    return jax.lax.dot_general(a, b, (((a.ndim - 2,), (b.ndim - 2,)), (batch, batch)),
                               preferred_element_type=jnp.float32)


def _tn_through_a_copy(a: Array, b: Array) -> Array:
    """_tn for XLA:CPU: `a` first copied into transposed order, so the product is of the fast form."""
    return _nn(transposed(a), b)


def _with_float32_gradients(forward, grad_a, grad_b):
    """A bf16 product `forward(a, b)` whose VJP is `grad_a(g, a, b)`, `grad_b(g, a, b)`: bf16
    operands, float32 accumulation, cotangents in the inputs' own dtypes. Autodiff's own
    transpose of a bf16 product would round a float32 kernel's gradient to bf16."""

    @jax.custom_vjp
    def product(a: Array, b: Array) -> Array:
        return forward(a.astype(BF16), b.astype(BF16))

    # The residuals are the inputs as given: callers pass activations already in bf16 (the
    # casts cost nothing for them), and a float32 kernel's gradient stays float32.
    def fwd(a, b):
        return product(a, b), (a, b)

    def bwd(residuals, g):
        a, b = residuals
        g, ab, bb = g.astype(BF16), a.astype(BF16), b.astype(BF16)
        return grad_a(g, ab, bb).astype(a.dtype), grad_b(g, ab, bb).astype(b.dtype)

    product.defvjp(fwd, bwd)
    return product


def _products(tn):
    """(a @ b, a @ b^T) whose gradients read a transposed operand through `tn`."""
    matmul = _with_float32_gradients(
        _nn,
        lambda g, a, b: _nt(g, b),  # g b^T, b read as [N, K]
        lambda g, a, b: tn(a, g))  # a^T g
    matmul_nt = _with_float32_gradients(
        _nt,
        lambda g, a, b: _nn(g, b),  # g b
        lambda g, a, b: tn(g, a))  # g^T a
    return matmul, matmul_nt


def _one_batch_axis(product):
    """`product` on [..., M, K] operands with their leading axes merged into one. XLA:CPU runs a
    batched bf16 product fast only on row-major operands with one batch axis; attention's heads,
    moved ahead of positions by a bare transpose, keep a permuted layout, and merging the axes
    makes that transpose a real copy (the product otherwise falls back to float32)."""
    def merged(a: Array, b: Array) -> Array:
        if a.ndim <= 3:
            return product(a, b)
        out = product(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
        return out.reshape(*a.shape[:-2], *out.shape[-2:])
    return merged


# The transposed copies and merged batch axes are workarounds for XLA:CPU alone: elsewhere they
# would only cost passes over memory.
_CPU_PRODUCTS = tuple(_one_batch_axis(p) for p in _products(_tn_through_a_copy))
_ACCELERATOR_PRODUCTS = _products(_tn)


def _for_backend():
    return _CPU_PRODUCTS if jax.default_backend() == "cpu" else _ACCELERATOR_PRODUCTS


def matmul(a: Array, b: Array) -> Array:
    """a [..., M, K] @ b [..., K, N] -> float32, bf16 operands: a dense layer (x @ kernel),
    attention's probs @ value."""
    return _for_backend()[0](a, b)


def matmul_nt(a: Array, b: Array) -> Array:
    """a [..., M, K] @ b [..., N, K]^T -> float32, bf16 operands: attention's query @ key^T."""
    return _for_backend()[1](a, b)


# --- Where bf16 is the faster choice ---------------------------------------------------------

COMPUTE_DTYPES = ("auto", "float32", "bfloat16")


def fast_bfloat16() -> tuple[bool, str]:
    """(whether this machine multiplies bf16 faster than float32, why). GPUs and TPUs do; a CPU
    does with AVX-512 BF16 or AMX (x86 Linux, read from /proc/cpuinfo). Elsewhere, an AVX2-only
    x86 CPU for one, a bf16 product is no faster than float32 and only less exact."""
    platform = jax.default_backend()
    if platform in ("gpu", "tpu", "cuda", "rocm"):
        return True, f"the {platform} has bf16 matrix units"
    flags = cpu_flags()
    found = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    if found:
        return True, f"this CPU has {' and '.join(found)}"
    return False, "this CPU has no bf16 matrix instructions (avx512_bf16, amx_bf16)"


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def resolve_compute_dtype(name: str) -> tuple[str, str]:
    """A config's compute_dtype ("auto", "float32" or "bfloat16") -> (dtype, why)."""
    if name != "auto":
        return name, "as configured"
    fast, why = fast_bfloat16()
    return ("bfloat16" if fast else "float32"), f"auto: {why}"
