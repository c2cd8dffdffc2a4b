"""glibc malloc settings for XLA:CPU's per-step buffers (Linux, glibc).

XLA:CPU allocates each step's temporary buffers afresh, hundreds of MB at once, and frees them
at the step's end. glibc serves allocations over 32 MB (whatever its mmap threshold says) with a
fresh mmap and unmaps them on free, so every page was faulted in and zeroed again each step:
190,000 minor faults and a quarter of the CPU time in the kernel for a MiniLM step.

`MTBERT_MALLOC_TUNABLES` chooses what `train.py`, `evaluate.py` and the benchmarks start with:

- `huge_pages` (the default): `glibc.malloc.hugetlb=1` (glibc 2.35 or newer, transparent huge
  pages on), the mappings in 2 MB pages: about 1,300 faults per step. The kernel must then find
  free huge pages every step, and it sometimes stalls compacting memory: in a float32 MiniLM step
  at seq 128, one step in two or three took 1.3-1.7 s of system time more (2.9 s against 1.9).
- `reuse`: huge pages and `glibc.malloc.mmap_max=0` (no allocation gets a mapping of its own),
  `glibc.malloc.arena_max=1` (one heap, grown by brk: other arenas' heaps are capped at 64 MB
  and map large buffers anyway), `glibc.malloc.trim_threshold=16 GiB` (freed memory stays for
  the next step). No fault and no system time per step once running, and no stalls, but the one
  heap fragments: peak memory 1.5-1.6x (MiniLM 2.5 to 3.8 GB, bert-base 8.0 to 12.8 GB at seq
  128), and the tiny-model host loop slower (one lock for every thread's allocations). Worth it
  for float32 on a CPU with memory to spare; no faster in bf16 (docs/performance.md).
- `0`: glibc's defaults.

glibc reads tunables only at start-up, so `train.py` and `evaluate.py` start themselves again
with them set; tunables already in GLIBC_TUNABLES are kept as given.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV_SWITCH = "MTBERT_MALLOC_TUNABLES"
MODES = ("huge_pages", "reuse", "0")
_HUGE_PAGES = {"glibc.malloc.hugetlb": "1"}
_REUSE = {"glibc.malloc.mmap_max": "0", "glibc.malloc.arena_max": "1",
          "glibc.malloc.trim_threshold": str(16 << 30)}
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


def tunables(mode: str = "huge_pages") -> dict[str, str]:
    """The tunables of `mode` that this machine takes (none off Linux/glibc)."""
    if mode not in MODES:
        raise ValueError(f"{ENV_SWITCH}={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "0" or not sys.platform.startswith("linux") or _glibc_version() is None:
        return {}
    return {**(_REUSE if mode == "reuse" else {}), **(_HUGE_PAGES if huge_pages_available() else {})}


def with_tunables(environ: dict[str, str]) -> dict[str, str]:
    """`environ` with the missing tunables of its MTBERT_MALLOC_TUNABLES mode (default
    huge_pages) appended to GLIBC_TUNABLES; a name already there is left as given."""
    given = environ.get("GLIBC_TUNABLES", "")
    names = {item.split("=", 1)[0] for item in given.split(":") if item}
    # MTBERT_HUGE_PAGES=0 is this switch's older name.
    mode = environ.get(ENV_SWITCH) or ("0" if environ.get("MTBERT_HUGE_PAGES") == "0" else "huge_pages")
    wanted = tunables(mode)
    missing = [f"{name}={value}" for name, value in wanted.items() if name not in names]
    if not missing:
        return dict(environ)
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [given, *missing]))}


def tuned_environment() -> dict[str, str]:
    """This process's environment with_tunables; a bad MTBERT_MALLOC_TUNABLES ends the program
    with one line and exit status 2."""
    try:
        return with_tunables(dict(os.environ))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def restart_with_malloc_tunables() -> None:
    """Re-executes this program with the tunables set, once; does nothing where none is missing."""
    env = tuned_environment()
    if env.get("GLIBC_TUNABLES", "") == os.environ.get("GLIBC_TUNABLES", ""):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)  # -c, -m and options too
