"""glibc malloc settings that let XLA:CPU reuse its per-step buffers (Linux, glibc).

XLA:CPU allocates each step's temporary buffers afresh, hundreds of MB at once, and frees them
at the step's end. glibc serves allocations over 32 MB (whatever its mmap threshold says) with a
fresh mmap and unmaps them on free, so every page was faulted in and zeroed again each step:
190,000 minor faults and a quarter of the CPU time in the kernel for a MiniLM step. Huge pages
(`glibc.malloc.hugetlb=1`) cut that to about 1,300 faults of 2 MB, but then the kernel must find
free huge pages every step, and one step in two or three stalled in compaction (1.3-1.7 s of
system time in a 2 s float32 MiniLM step at seq 128). These tunables stop the churn instead:

- `glibc.malloc.mmap_max=0`: no allocation gets a mapping of its own; all come from the heap;
- `glibc.malloc.arena_max=1`: one heap, the main one, grown by brk (other arenas' heaps are
  capped at 64 MB and would map large buffers anyway);
- `glibc.malloc.trim_threshold=16 GiB`: freed memory stays in the heap for the next step;
- `glibc.malloc.hugetlb=1` (glibc 2.35 or newer, transparent huge pages on): the heap in 2 MB
  pages, fewer TLB misses.

After the first steps no step faults a page: 0 minor faults and no system time per step
(docs/performance.md). The cost: memory freed after a peak is not given back to the system
until the process ends. glibc reads tunables only at start-up, so `train.py` and `evaluate.py`
start themselves again with them set; tunables already in GLIBC_TUNABLES are kept as given.
MTBERT_MALLOC_TUNABLES=0 turns this off.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV_SWITCH = "MTBERT_MALLOC_TUNABLES"
_REUSE = {"glibc.malloc.mmap_max": "0", "glibc.malloc.arena_max": "1",
          "glibc.malloc.trim_threshold": str(16 << 30)}
_HUGE_PAGES = {"glibc.malloc.hugetlb": "1"}
_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _glibc_version() -> tuple[int, int] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = (int(x) for x in version.split(".")[:2])
    except (ValueError, OSError, AttributeError):
        return None
    return (major, minor) if name == "glibc" else None


def huge_pages_available() -> bool:
    """glibc >= 2.35 (the hugetlb tunable) and transparent huge pages not switched off."""
    try:
        mode = _THP.read_text()
    except OSError:
        return False
    version = _glibc_version()
    return version is not None and version >= (2, 35) and "[never]" not in mode


def tunables() -> dict[str, str]:
    """The tunables this machine takes (none off Linux/glibc)."""
    if not sys.platform.startswith("linux") or _glibc_version() is None:
        return {}
    return {**_REUSE, **(_HUGE_PAGES if huge_pages_available() else {})}


def with_tunables(environ: dict[str, str]) -> dict[str, str]:
    """`environ` with the missing tunables appended to GLIBC_TUNABLES (a name already there is
    left as given); unchanged when switched off."""
    if environ.get(ENV_SWITCH, "1") == "0":
        return dict(environ)
    given = environ.get("GLIBC_TUNABLES", "")
    names = {item.split("=", 1)[0] for item in given.split(":") if item}
    missing = [f"{name}={value}" for name, value in tunables().items() if name not in names]
    if not missing:
        return dict(environ)
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [given, *missing]))}


def restart_with_malloc_tunables() -> None:
    """Re-executes this program with the tunables set, once; does nothing where none is missing."""
    env = with_tunables(dict(os.environ))
    if env.get("GLIBC_TUNABLES", "") == os.environ.get("GLIBC_TUNABLES", ""):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)  # -c, -m and options too
