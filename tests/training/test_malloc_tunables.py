"""train.py and evaluate.py restart themselves once with glibc's malloc tunables set."""

import os
import subprocess
import sys

import pytest

from mtbert_jax.training import malloc_tunables

SCRIPT = ("import os, sys\n"
          "from mtbert_jax.training.malloc_tunables import restart_with_malloc_tunables\n"
          "print('start', flush=True)\n"
          "restart_with_malloc_tunables()\n"
          "print('tunables=' + os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:])\n")
REUSE = "glibc.malloc.mmap_max=0:glibc.malloc.arena_max=1:glibc.malloc.trim_threshold=17179869184"


def _run(env_changes, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", malloc_tunables.ENV_SWITCH)}
    out = subprocess.run([sys.executable, "-c", SCRIPT, *args], env=env | env_changes, capture_output=True,
                         text=True, check=True)
    return out.stdout.splitlines()


@pytest.mark.skipif(not malloc_tunables.huge_pages_available(),
                    reason="needs Linux, glibc >= 2.35 and transparent huge pages")
def test_restarts_once_with_the_tunables_and_the_same_arguments():
    lines = _run({}, "--flag", "x")
    assert lines == ["start", "start", f"tunables={REUSE}:glibc.malloc.hugetlb=1 ['--flag', 'x']"]
    # A tunable already given is kept as given; the others are added.
    lines = _run({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert lines[-1] == ("tunables=glibc.malloc.arena_max=2:glibc.malloc.mmap_max=0:"
                         "glibc.malloc.trim_threshold=17179869184:glibc.malloc.hugetlb=1 []")


def test_switched_off_or_all_given_it_does_not_restart():
    assert _run({malloc_tunables.ENV_SWITCH: "0"}) == ["start", "tunables= []"]
    given = f"{REUSE}:glibc.malloc.hugetlb=0"
    assert _run({"GLIBC_TUNABLES": given}) == ["start", f"tunables={given} []"]


@pytest.mark.skipif(not malloc_tunables.tunables(), reason="needs Linux and glibc")
def test_a_step_of_xla_cpu_faults_no_pages_once_running():
    """The point of the tunables: after warm-up, a jitted step that allocates and frees a large
    temporary every call maps no fresh memory (without them: a fault per page, every call)."""
    code = ("import resource, jax, jax.numpy as jnp\n"
            "f = jax.jit(lambda x: (jnp.tanh(x @ x.T) @ x).sum())\n"
            "x = jnp.ones((4096, 1024))\n"
            "for _ in range(3): f(x).block_until_ready()\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(5): f(x).block_until_ready()\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", malloc_tunables.ENV_SWITCH)}

    def faults(environ):
        out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    without = faults(env)
    tuned = faults(malloc_tunables.with_tunables(env))
    # The [4096, 4096] float32 temporary (64 MB: over glibc's 32 MB, so mapped afresh) costs
    # thousands of faults a call without them (21,058 for the 5 calls when written), none with.
    assert without > 10_000, without
    assert tuned < 100, tuned
