"""Transparent huge pages for XLA:CPU's per-step buffers (Linux, glibc 2.35 or newer).

XLA:CPU allocates each step's temporary buffers afresh, hundreds of MB at once; glibc serves
allocations that large (over 32 MB, whatever its thresholds say) with a fresh mmap, so every
4 KB page is faulted in and zeroed again each step: about 190,000 minor page faults and a
quarter of the CPU time spent in the kernel for a MiniLM step. With the glibc tunable
`glibc.malloc.hugetlb=1` those mappings use transparent huge pages (2 MB): about 600 faults per
step, a fifth of the system time, and a step about 15% faster (docs/performance.md). glibc reads
tunables only at start-up, so `train.py` and `evaluate.py` start themselves again with it set.
MTBERT_HUGE_PAGES=0 turns this off.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
ENV_SWITCH = "MTBERT_HUGE_PAGES"
_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def available() -> bool:
    """Linux with glibc >= 2.35 and transparent huge pages not switched off."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = (int(x) for x in version.split(".")[:2])
        mode = _THP.read_text()
    except (ValueError, OSError, AttributeError):
        return False
    return name == "glibc" and (major, minor) >= (2, 35) and "[never]" not in mode


def restart_with_huge_pages() -> None:
    """Re-executes this program with the tunable set, once; does nothing where it would not help."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if os.environ.get(ENV_SWITCH, "1") == "0" or "glibc.malloc.hugetlb" in tunables or not available():
        return
    env = {**os.environ, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)  # -c, -m and options too
