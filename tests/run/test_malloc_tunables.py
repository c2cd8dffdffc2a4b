"""train.py and evaluate.py restart themselves once with glibc's malloc tunables set."""

import os
import subprocess
import sys

import pytest

from mtbert_jax.run import malloc_tunables

SCRIPT = ("import os, sys\n"
          "from mtbert_jax.run.malloc_tunables import restart_with_malloc_tunables\n"
          "print('start', flush=True)\n"
          "restart_with_malloc_tunables()\n"
          "print('tunables=' + os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:])\n")
REUSE = "glibc.malloc.mmap_max=0:glibc.malloc.arena_max=1:glibc.malloc.trim_threshold=17179869184"


def _clean_env() -> dict:
    """This process's environment without any tunables or mode of its own."""
    return {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", malloc_tunables.ENV_SWITCH)}


def _run(env_changes, *args):
    out = subprocess.run([sys.executable, "-c", SCRIPT, *args], env=_clean_env() | env_changes, capture_output=True,
                         text=True, check=True, timeout=60)  # a restart loop fails, not hangs
    return out.stdout.splitlines()


@pytest.mark.skipif(not malloc_tunables.huge_pages_available(),
                    reason="needs Linux, glibc >= 2.35 and transparent huge pages")
def test_restarts_once_with_the_tunables_and_the_same_arguments():
    lines = _run({}, "--flag", "x")
    assert lines == ["start", "start", "tunables=glibc.malloc.hugetlb=1 ['--flag', 'x']"]
    lines = _run({malloc_tunables.ENV_SWITCH: "reuse"})
    assert lines == ["start", "start", f"tunables={REUSE}:glibc.malloc.hugetlb=1 []"]
    # A tunable already given is kept as given; the others are added.
    lines = _run({malloc_tunables.ENV_SWITCH: "reuse", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert lines[-1] == ("tunables=glibc.malloc.arena_max=2:glibc.malloc.mmap_max=0:"
                         "glibc.malloc.trim_threshold=17179869184:glibc.malloc.hugetlb=1 []")


def test_switched_off_or_all_given_it_does_not_restart():
    assert _run({malloc_tunables.ENV_SWITCH: "0"}) == ["start", "tunables= []"]
    assert _run({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) == ["start", "tunables=glibc.malloc.hugetlb=0 []"]
    given = f"{REUSE}:glibc.malloc.hugetlb=0"
    assert _run({malloc_tunables.ENV_SWITCH: "reuse", "GLIBC_TUNABLES": given}) == ["start", f"tunables={given} []"]


def test_modes_without_huge_pages(monkeypatch):
    """What each mode asks for where transparent huge pages are off; a name already given wins."""
    monkeypatch.setattr(malloc_tunables, "huge_pages_available", lambda: False)
    base = {"PATH": "/bin"}
    assert malloc_tunables.with_tunables(base) == base
    reuse = malloc_tunables.with_tunables(base | {malloc_tunables.ENV_SWITCH: "reuse"})
    assert reuse["GLIBC_TUNABLES"] == REUSE
    given = base | {malloc_tunables.ENV_SWITCH: "reuse", "GLIBC_TUNABLES": "glibc.malloc.mmap_max=4"}
    assert malloc_tunables.with_tunables(given)["GLIBC_TUNABLES"] == (
        "glibc.malloc.mmap_max=4:glibc.malloc.arena_max=1:glibc.malloc.trim_threshold=17179869184")
    # With huge pages: the default asks for them; the older switch MTBERT_HUGE_PAGES=0 still
    # turns everything off.
    monkeypatch.setattr(malloc_tunables, "huge_pages_available", lambda: True)
    monkeypatch.setattr(malloc_tunables, "_glibc_version", lambda: (2, 39))
    monkeypatch.setattr(malloc_tunables.sys, "platform", "linux")
    assert malloc_tunables.with_tunables(base)["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert malloc_tunables.with_tunables(base | {"MTBERT_HUGE_PAGES": "0"}) == base | {"MTBERT_HUGE_PAGES": "0"}


def test_a_bad_mode_is_one_line_and_status_2():
    env = _clean_env() | {malloc_tunables.ENV_SWITCH: "fast"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: MTBERT_MALLOC_TUNABLES='fast': expected one of huge_pages, reuse, 0"]


@pytest.mark.skipif(not malloc_tunables.tunables("reuse"), reason="needs Linux and glibc")
def test_a_step_of_xla_cpu_faults_no_pages_once_running():
    """The point of `reuse`: after warm-up, a jitted step whose 64 MB result is freed after each
    call maps no fresh memory (without: over glibc's 32 MB, mapped afresh, a fault per page)."""
    code = ("import resource, jax, jax.numpy as jnp\n"
            "f = jax.jit(lambda x: jnp.tanh(x @ x.T))\n"
            "x = jnp.ones((4096, 1024))\n"
            "for _ in range(5): f(x).block_until_ready()\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(5): f(x).block_until_ready()\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    env = _clean_env()

    def faults(environ):
        out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True,
                             timeout=120)
        return int(out.stdout.split()[-1])

    without = faults(env)
    tuned = faults(malloc_tunables.with_tunables(env | {malloc_tunables.ENV_SWITCH: "reuse"}))
    # 64 MB a call is 16,384 pages of 4 KB, or 32 of 2 MB where the kernel backs every
    # mapping with huge pages (transparent_hugepage=always).
    assert without >= 5 * 32, without
    # A few faults may remain while the heap settles (105 once, with a training run sharing the
    # cores); a fresh mapping per call would be thousands.
    assert tuned <= max(10, without // 50), (tuned, without)
