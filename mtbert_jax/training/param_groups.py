"""Parameter groups by name: what is frozen, which learning rate, parameter counts.

Paths are "/"-joined names such as `bert/encoder/layer_3/attention/self/query/kernel`,
`adapters_sst/down/kernel`, `heads_quora/dense/bias`. The optimizer labels groups with
`label_tree` (a frozen group goes to `optax.set_to_zero()`: no state, no update).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Mapping, Sequence

import jax
from flax import traverse_util

ENCODER = r"^bert/"
TOP_LAYERS = r"^adapters_[^/]+/top_layer/"  # task-specific transformer layers above the encoder


def path_tree(params: Mapping) -> dict:
    """The same tree as `params`, each leaf replaced by its "/"-joined path."""
    flat = traverse_util.flatten_dict(dict(params))
    return traverse_util.unflatten_dict({k: "/".join(k) for k in flat})


def label_tree(params: Mapping, rules: Sequence[tuple[str, str]], default: str) -> dict:
    """Each leaf's label: the first (regex, label) rule whose regex matches its path."""
    compiled = [(re.compile(pattern), label) for pattern, label in rules]
    return jax.tree_util.tree_map(
        lambda path: next((label for rx, label in compiled if rx.search(path)), default),
        path_tree(params))


def count_parameters(params: Mapping) -> dict[str, int]:
    """Parameter count per top-level component (bert, adapters_TASK, heads_TASK, ...)."""
    counts: Counter = Counter()
    for path, value in traverse_util.flatten_dict(dict(params)).items():
        counts[path[0]] += int(value.size)
    return dict(sorted(counts.items()))


def parameter_report(params: Mapping) -> str:
    counts = count_parameters(params)
    width = max(len(k) for k in counts)
    lines = [f"{name:<{width}}  {n:>12,}" for name, n in counts.items()]
    extra = sum(n for name, n in counts.items() if name != "bert")
    lines.append(f"{'total':<{width}}  {sum(counts.values()):>12,}  ({extra:,} beyond the encoder)")
    return "\n".join(lines)
