"""JAX's persistent compilation cache, so a restarted or resumed run, evaluate.py and the next
run of the same configuration skip XLA compilation (one compile per task and bucket length:
about 5 s each for MiniLM on 2 CPU cores, half a minute or more per epoch's first steps).

Kept beside the tokenized-data cache: $MTBERT_CACHE_DIR/xla, else ~/.cache/mtbert_jax/xla.
MTBERT_XLA_CACHE=0 turns it off.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import jax

from mtbert_jax.data.tokenized import default_cache_dir

ENV_SWITCH = "MTBERT_XLA_CACHE"


def enable(directory: Optional[str | Path] = None, min_compile_seconds: float = 1.0) -> Optional[Path]:
    """Turns the cache on (before the first compilation); returns its directory, or None when off."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    path = Path(directory) if directory else default_cache_dir() / "xla"
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    return path
