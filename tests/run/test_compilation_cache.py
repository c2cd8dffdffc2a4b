"""The persistent XLA compilation cache: on by default in its own directory, off by switch."""

import os
import subprocess
import sys

SCRIPT = """
import sys, jax, jax.numpy as jnp
from mtbert_jax.run import compilation_cache
path = compilation_cache.enable(sys.argv[1], min_compile_seconds=0.0)
print(path)
jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((64, 64))).block_until_ready()
"""


def _run(cache_dir, **env):
    return subprocess.run([sys.executable, "-c", SCRIPT, str(cache_dir)], capture_output=True, text=True,
                          check=True, env={**os.environ, **env}).stdout.strip()


def test_compiled_programs_are_written_to_the_cache(tmp_path):
    assert _run(tmp_path / "xla") == str(tmp_path / "xla")
    assert any((tmp_path / "xla").iterdir())


def test_switched_off(tmp_path):
    assert _run(tmp_path / "xla", MTBERT_XLA_CACHE="0") == "None"
    assert not (tmp_path / "xla").exists()
