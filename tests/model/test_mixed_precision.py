"""The bf16 products' custom gradients against float32 autodiff of the same products."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtbert_jax.model import mixed_precision as mp

BF16, F32 = jnp.bfloat16, jnp.float32


def _bf16_exact(key, shape, scale=1.0):
    """Random values that bf16 represents exactly, so float32 references see the same inputs."""
    return (scale * jax.random.normal(key, shape)).astype(BF16)


@pytest.mark.parametrize("shape", [(5, 16), (3, 7, 12), (2, 3, 6, 10), (4, 9), (2, 7)])
def test_transposed_is_the_exact_transpose(shape):
    x = jnp.arange(np.prod(shape), dtype=F32).reshape(shape)
    np.testing.assert_array_equal(jax.jit(mp.transposed)(x), np.swapaxes(np.asarray(x), -1, -2))


def _check_vjp(fn, reference, args, rtol):
    """fn's value and gradients of sum(w * fn(args)) equal the float32 reference's."""
    out = jax.jit(fn)(*args)
    w = jax.random.normal(jax.random.PRNGKey(9), out.shape).astype(BF16).astype(F32)
    ref_args = [a.astype(F32) for a in args]
    np.testing.assert_allclose(out, reference(*ref_args), rtol=rtol, atol=rtol)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(w * fn(*a)), argnums=tuple(range(len(args)))))(*args)
    ref_grads = jax.grad(lambda *a: jnp.sum(w * reference(*a)), argnums=tuple(range(len(args))))(*ref_args)
    for arg, g, r in zip(args, grads, ref_grads):
        assert g.dtype == arg.dtype and g.shape == arg.shape
        # The cotangent w is bf16-exact, so only bf16 rounding of the results and the
        # summation order differ from the float32 reference.
        scale = float(jnp.abs(r).max())
        np.testing.assert_allclose(np.asarray(g, np.float32), r, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_dense_gradients_match_float32(monkeypatch, backend):
    """On the CPU's products and the accelerators' (the backend faked; the same VJP is tested
    for real on a GPU by running this file there)."""
    if jax.default_backend() == "cpu":
        monkeypatch.setattr(jax, "default_backend", lambda: backend)
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    x = _bf16_exact(k1, (48, 24))
    kernel = _bf16_exact(k2, (24, 40), 0.1).astype(F32)  # a float32 parameter
    hp = jax.lax.Precision.HIGHEST
    _check_vjp(mp.matmul, lambda x, w: jnp.dot(x, w, precision=hp), (x, kernel), rtol=1e-2)
    # The kernel's gradient stays float32 and is not rounded to bf16: exact to float32's
    # accumulation, far inside one bf16 ulp (2^-8).
    w = jax.random.normal(jax.random.PRNGKey(3), (48, 40)).astype(BF16).astype(F32)
    g = jax.grad(lambda k: jnp.sum(w * mp.matmul(x, k)))(kernel)
    ref = jnp.dot(x.astype(F32).T, w, precision=hp)
    assert g.dtype == F32
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_attention_products_gradients_match_float32(monkeypatch, backend):
    if jax.default_backend() == "cpu":
        monkeypatch.setattr(jax, "default_backend", lambda: backend)
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    q, k = _bf16_exact(keys[0], (2, 3, 16, 8)), _bf16_exact(keys[1], (2, 3, 16, 8))
    hp = jax.lax.Precision.HIGHEST
    _check_vjp(mp.matmul_nt,
               lambda q, k: jnp.einsum("bhqd,bhkd->bhqk", q, k, precision=hp), (q, k), rtol=1e-2)
    probs = jax.nn.softmax(_bf16_exact(keys[2], (2, 3, 16, 16)).astype(F32), -1).astype(BF16)
    _check_vjp(mp.matmul,
               lambda p, v: jnp.einsum("bhqk,bhkd->bhqd", p, v, precision=hp), (probs, k), rtol=1e-2)



@pytest.mark.parametrize("flags, expected", [({"avx2", "avx512f", "avx512_bf16"}, "bfloat16"),
                                             ({"avx2", "amx_bf16"}, "bfloat16"),
                                             ({"avx2", "fma"}, "float32"), (set(), "float32")])
def test_auto_picks_bfloat16_only_where_the_cpu_multiplies_it_fast(monkeypatch, flags, expected):
    monkeypatch.setattr(mp, "cpu_flags", lambda: flags)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    dtype, why = mp.resolve_compute_dtype("auto")
    assert dtype == expected and why.startswith("auto: ")
    assert mp.resolve_compute_dtype("float32") == ("float32", "as configured")
    assert mp.resolve_compute_dtype("bfloat16")[0] == "bfloat16"


def test_auto_picks_bfloat16_on_accelerators(monkeypatch):
    monkeypatch.setattr(mp, "cpu_flags", lambda: set())
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert mp.resolve_compute_dtype("auto")[0] == "bfloat16"


def test_accelerators_read_transposed_operands_in_place(monkeypatch):
    """Off the CPU the gradients are the same products without the transposed copies."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(2))
    a, b = _bf16_exact(k1, (2, 16, 8)), _bf16_exact(k2, (2, 8, 12)).astype(F32)
    w = jax.random.normal(jax.random.PRNGKey(3), (2, 16, 12)).astype(BF16).astype(F32)

    def value_and_grads(fn, *args):
        return jax.value_and_grad(lambda *x: jnp.sum(w * fn(*x)), argnums=(0, 1))(*args)

    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    cpu = value_and_grads(mp.matmul, a, b), value_and_grads(mp.matmul_nt, a, jnp.swapaxes(b, -1, -2))
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda a, b: jnp.sum(mp.matmul(a, b)), argnums=(0, 1)))(a, b))
    assert "optimization_barrier" not in jaxpr
    gpu = value_and_grads(mp.matmul, a, b), value_and_grads(mp.matmul_nt, a, jnp.swapaxes(b, -1, -2))
    for x, y in zip(jax.tree_util.tree_leaves(cpu), jax.tree_util.tree_leaves(gpu)):
        assert x.dtype == y.dtype
        # bf16-exact inputs, float32 accumulation on both: equal up to the order of the sums.
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=1e-5, atol=1e-5)
