"""Disposable caches: every file the project computes from other files (tokenized task files,
distillation's teacher targets, a run's dev outputs) is read through `cached_arrays`, the one
mechanism for all of them.

A cache file is an .npz of named arrays (never pickles) plus two entries of its own: the key it
was computed for (what the inputs were) and a SHA-256 of every array's name, dtype, shape and
bytes. A file that cannot be read (truncated, a flipped byte, not a zip), holds another key, or
whose digest does not match is named in one warning line and computed again; so is one that
cannot be written (a read-only cache directory): the work goes on without it. Files are written
whole under a temporary name, then renamed: a kill leaves the old file or the new one.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

_KEY, _DIGEST = "__cache_key__", "__cache_digest__"

Arrays = dict[str, np.ndarray]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of the arrays' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _read(path: Path, key: str) -> Arrays:
    """The arrays of a cache file computed for `key`; ValueError says why it cannot be used."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except Exception as e:  # zipfile.BadZipFile, a CRC error, a truncated member, an object array
        raise ValueError(f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    saved_key, saved_digest = arrays.pop(_KEY, None), arrays.pop(_DIGEST, None)
    if saved_key is None or saved_digest is None:
        raise ValueError("not a cache file of this version")
    if str(saved_key) != key:
        raise ValueError("computed from other inputs")
    if str(saved_digest) != digest(arrays):
        raise ValueError("its contents do not match their digest")
    return arrays


def write(path: Path, key: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes a cache file whole, then renames it into place; OSError when it cannot."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            np.savez(f, **arrays, **{_KEY: np.asarray(key), _DIGEST: np.asarray(digest(arrays))})
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def cached_arrays(path: str | Path, key: str, compute: Callable[[], Mapping[str, np.ndarray]],
                  store: bool = True, warn: Callable[[str], None] = _warn) -> Arrays:
    """The arrays `compute()` gives for `key`, read from `path` when it holds them intact;
    otherwise computed (a damaged or stale file named in one `warn` line) and, with `store`,
    written to `path` for the next time."""
    path = Path(path)
    if path.exists():
        try:
            return _read(path, key)
        except ValueError as why:
            warn(f"{path}: {why}; computing it again")
    arrays = dict(compute())
    if store:
        try:
            write(path, key, arrays)
        except OSError as e:
            warn(f"{path}: cannot be written ({e.strerror or e}); going on without the cache")
    return arrays
