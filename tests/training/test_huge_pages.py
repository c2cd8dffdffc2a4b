"""train.py and evaluate.py restart themselves once with glibc's huge-page tunable set."""

import os
import subprocess
import sys

import pytest

from mtbert_jax.training import huge_pages

SCRIPT = ("import os, sys\n"
          "from mtbert_jax.training.huge_pages import restart_with_huge_pages\n"
          "print('start', flush=True)\n"
          "restart_with_huge_pages()\n"
          "print('tunables=' + os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:])\n")


def _run(env_changes, *args):
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | env_changes
    out = subprocess.run([sys.executable, "-c", SCRIPT, *args], env=env, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


@pytest.mark.skipif(not huge_pages.available(), reason="needs Linux, glibc >= 2.35 and transparent huge pages")
def test_restarts_once_with_the_tunable_and_the_same_arguments():
    lines = _run({}, "--flag", "x")
    assert lines == ["start", "start", "tunables=glibc.malloc.hugetlb=1 ['--flag', 'x']"]
    # Other tunables are kept.
    lines = _run({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert lines[-1] == "tunables=glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1 []"


def test_switched_off_or_already_set_it_does_not_restart():
    assert _run({"MTBERT_HUGE_PAGES": "0"}) == ["start", "tunables= []"]
    assert _run({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) == ["start", "tunables=glibc.malloc.hugetlb=0 []"]
