"""R-Drop (Liang et al. 2021): each batch through the model twice with different dropout
masks; the task loss of both passes plus a term pulling their predictions together.

The paper's per-example loss is NLL_1 + NLL_2 + alpha/2 (KL(P_1||P_2) + KL(P_2||P_1)). Here it
is halved, 1/2 (L_1 + L_2) + alpha/4 l_s(p_1, p_2) with l_s SMART's symmetric divergence
(symmetric KL; squared error for STS's score), so that a task keeps its weight among the
others whether R-Drop is on for it or not (with AdamW, a task's loss scale alone would not
matter; its gradient's share of the sum and of the clipped norm does). The paper tries alpha
in {0.1, 0.5, 1.0} for GLUE fine-tuning.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax

from mtbert_jax.tasks import TASKS


@dataclasses.dataclass(frozen=True)
class RDropConfig:
    """R-Drop (Liang et al. 2021): each batch twice under other dropout masks, the mean of the
    two losses plus alpha/4 times their predictions' symmetric divergence. These defaults are
    the run's (configs/default.py's objective.rdrop)."""

    # The tasks it is on for, e.g. ("sst",); each costs that task a second forward and backward.
    tasks: Sequence[str] = ()
    # Weight of the divergence (the paper tries 0.1, 0.5, 1 on GLUE).
    alpha: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))


def second_pass_key(key: jax.Array) -> jax.Array:
    """The dropout key of the second pass: other masks for the same examples, on any device."""
    return jax.random.fold_in(key, 2)


def rdrop_loss(task: str, first: jax.Array, second: jax.Array, loss_first: jax.Array, loss_second: jax.Array,
               alpha: float) -> jax.Array:
    """[batch] R-Drop's per-example loss from the two passes' head outputs and task losses."""
    return 0.5 * (loss_first + loss_second) + 0.25 * alpha * TASKS[task].kind.divergence(first, second)
