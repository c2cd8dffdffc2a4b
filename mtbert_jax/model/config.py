"""What the multi-task model is made of: tasks, pooling, pair heads, adapters."""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

from mtbert_jax.errors import ConfigError
from mtbert_jax.model.bert_config import BertConfig
from mtbert_jax.tasks import TASKS

POOLINGS = ("pooler", "cls", "mean", "max")
# cross: the pooled vector of one joint `[CLS] a [SEP] b [SEP]` sequence.
# The others encode each sentence separately (a bi-encoder), then combine u and v:
#   bi_sum: u + v (seed 000); bi_concat: [u; v]; bi_concat_diff_prod: [u; v; |u-v|; u*v];
#   cosine: s = 20 cos(W u, W v), the STS score 5 sigmoid(s), the Quora logit s (seed 002's d features);
#   bi_cosine_concat: [u; v; cos(u, v)] -> dropout -> linear (seed 002's 2d + 1);
#   bi_cosine: no parameters, the STS score 2.5 (1 + cos(u, v)), the Quora logit 20 cos(u, v)
#   (seed 002's cosine embedding loss experiment, which trains the two vectors only).
PAIR_HEADS = ("cross", "bi_sum", "bi_concat", "bi_concat_diff_prod", "cosine", "bi_cosine_concat", "bi_cosine")
# Pair heads that score cos(., .) directly: nothing for a shared hidden layer to feed.
COSINE_PAIR_HEADS = ("cosine", "bi_cosine")
ADAPTERS = ("none", "pals", "low_rank", "top_layer", "low_rank_top_layer")
ADAPTER_LAYERS = ("all", "top", "bottom")


class ModelConfigError(ConfigError):
    """A model configuration names something that does not exist."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model: tasks, sentence vectors, pair heads, adapters, dropout. These defaults are the
    run's (configs/default.py builds its `model` section from them)."""

    # Tasks to train, each with its own head: sst, quora, sts, cfimdb.
    tasks: tuple[str, ...] = ("sst", "quora", "sts")
    # Sentence vector: pooler (BERT's tanh dense on [CLS]) | cls | mean | max. Mean: MiniLM was
    # trained mean-pooled, and it leads the pooler by 0.006 dev overall over 3 seeds
    # (docs/results.md).
    pooling: str = "mean"
    # Per pair task: cross | bi_sum | bi_concat | bi_concat_diff_prod | cosine | bi_cosine_concat
    # | bi_cosine (no parameters: STS 2.5 (1 + cos(u, v))); see the table above.
    pair_heads: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: {"quora": "cross", "sts": "cross"})
    # One dense + GELU layer shared by the pair heads (seed 003); needs equal bi-encoder heads.
    shared_pair_hidden: bool = False
    # Task adapters: none | pals | low_rank | top_layer | low_rank_top_layer.
    adapter: str = "none"
    # d_s, the adapters' inner size (PALs: 204; seed 004's low-rank: 256).
    adapter_size: int = 204
    # Attention heads of the PAL layers (adapter_size must divide by it; 6 x 34 for d_s = 204).
    adapter_heads: int = 6
    # Which encoder layers get adapters: all | top | bottom (half each).
    adapter_layers: str = "all"
    # Dropout before each head's linear layer.
    head_dropout: float = 0.1
    # The encoder's hidden and attention dropout (PAL attention takes the latter); unset: the
    # checkpoint's config.json (MiniLM: 0.1).
    encoder_dropout: Optional[float] = None
    # Pair tasks predict the mean of the head's outputs for both sentence orders (Quora's
    # logit, STS's score), so that a pair's prediction never depends on its order; evaluation
    # of pair tasks costs twice as much.
    symmetric_pairs: bool = False

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "pair_heads", dict(self.pair_heads))
        problems = []
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            problems.append(f"tasks={list(self.tasks)}: expected a non-empty subset of {sorted(TASKS)}")
        for name, value, allowed in (("pooling", self.pooling, POOLINGS),
                                     ("adapter", self.adapter, ADAPTERS),
                                     ("adapter_layers", self.adapter_layers, ADAPTER_LAYERS)):
            if value not in allowed:
                problems.append(f"{name}={value!r}: expected one of {allowed}")
        for task, head in self.pair_heads.items():
            if task in TASKS and not TASKS[task].is_pair:
                problems.append(f"pair_heads[{task!r}]: {task} is not a sentence-pair task")
            if head not in PAIR_HEADS:
                problems.append(f"pair_heads[{task!r}]={head!r}: expected one of {PAIR_HEADS}")
        if self.shared_pair_hidden:
            pair_tasks = [t for t in self.tasks if t in TASKS and TASKS[t].is_pair]
            heads = {self.pair_head(t) for t in pair_tasks}
            if len(pair_tasks) < 2 or len(heads) != 1 or heads & set(COSINE_PAIR_HEADS):
                problems.append("shared_pair_hidden needs two pair tasks with the same "
                                f"non-cosine pair head, got {dict((t, self.pair_head(t)) for t in pair_tasks)}")
        if self.adapter == "pals" and self.adapter_size % self.adapter_heads:
            problems.append(f"adapter_size={self.adapter_size} is not divisible by "
                            f"adapter_heads={self.adapter_heads}")
        for name in ("head_dropout", "encoder_dropout"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
                problems.append(f"{name}={value!r}: expected a rate in [0, 1)")
        if problems:
            raise ModelConfigError("model config: " + "; ".join(problems))

    def encoder_config(self, bert_config: BertConfig) -> BertConfig:
        """The checkpoint's BertConfig with this run's encoder dropout, where one is set."""
        if self.encoder_dropout is None:
            return bert_config
        return bert_config.replace(hidden_dropout_prob=float(self.encoder_dropout),
                                   attention_probs_dropout_prob=float(self.encoder_dropout))

    def pair_head(self, task: str) -> str:
        return self.pair_heads.get(task, "cross")

    def pair_encoding(self, task: str) -> str:
        """'cross' (one joint sequence) or 'bi' (two sequences): what the data pipeline makes."""
        return "cross" if not TASKS[task].is_pair or self.pair_head(task) == "cross" else "bi"

    def adapter_layer_indices(self, num_layers: int) -> tuple[int, ...]:
        half = num_layers // 2
        return {"all": tuple(range(num_layers)), "bottom": tuple(range(half)),
                "top": tuple(range(half, num_layers))}[self.adapter_layers]
