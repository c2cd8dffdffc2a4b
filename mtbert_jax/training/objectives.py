"""Each task's training objective: its loss, plus optionally R-Drop, MNRL, SMART and uncertainty
weighting.

An objective returns (sum of per-example losses over the real rows, number of real rows), so
micro-batches and devices add up to the exact mean (see step.py).

MNRL's in-batch negatives span the global batch: every device and every micro-batch. The step
first encodes the whole batch without gradients (`Objective.pair_vectors`), gathers the vectors
across devices, takes the ranking loss and its gradient with respect to every vector
(`Objective.ranking`), and hands each micro-batch its rows' vector gradients: the objective
then backpropagates them through the encoder (a gradient cache, as in GradCache and
sentence-transformers' CachedMNRL). The step is then the same on 1 or N devices and with or
without accumulation. The MNRL term is a mean over the positive pairs of the global batch.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtbert_jax.batch import EXAMPLE_IDS, GOLD, INPUT_IDS, LABELS, SECOND, TARGETS, TEXT_KEY_B, TOKEN_EXAMPLE, WEIGHTS
from mtbert_jax.data.tokenized import TaskData
from mtbert_jax.errors import ConfigError
from mtbert_jax.model.config import ModelConfig
from mtbert_jax.model.heads import COSINE_SCALE, cosine
from mtbert_jax.model.multitask import MultiTaskModel, dropout_token_ids
from mtbert_jax.tasks import REGRESSION, TASKS
from mtbert_jax.training.rdrop import RDropConfig, rdrop_loss, second_pass_key
from mtbert_jax.training.smart import SmartConfig, perturbation

Array = jax.Array
STS_LOSSES = ("mse", "cosine_embedding")


@dataclasses.dataclass(frozen=True)
class MnrlConfig:
    """Multiple negatives ranking loss (in-batch negatives, scale 20) for pair tasks with a
    bi-encoder head, on positive pairs: Quora duplicates, STS pairs with similarity >=
    sts_threshold. These defaults are the run's (configs/default.py's objective.mnrl)."""

    # The pair tasks it is on for (they need bi-encoder heads), e.g. ("quora", "sts").
    tasks: Sequence[str] = ()
    # Added to the task's own loss with this weight ...
    weight: float = 1.0
    # ... or instead of it (the task then trains on its positive pairs only).
    only: bool = False
    # STS pairs with similarity >= this are positives.
    sts_threshold: float = 4.0

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))


@dataclasses.dataclass(frozen=True)
class DistillationConfig:
    """Knowledge distillation (Hinton et al. 2015): each task also learns the soft outputs of
    finished runs (one, or an ensemble averaged), computed once before training
    (mtbert_jax/run/distillation.py): SST's and CFIMDB's class distribution (softened by the
    temperature), Quora's probability, STS's score. These defaults are the run's."""

    # The teachers' workdirs (runs of the student's tasks, each reading them its own way: any
    # architecture, tokenizer, max_length, pair encoding); none: no distillation.
    teachers: Sequence[str] = ()
    # Which checkpoint of each teacher: best, latest or a step.
    checkpoint: str = "best"
    # Loss = (1 - weight) x the gold labels' loss + weight x the teachers' (soft_loss).
    weight: float = 0.5
    # Softens both distributions of the classification tasks (the loss is scaled by T^2).
    temperature: float = 2.0
    # Altered copies of each training record (mtbert_jax/data/augment.py: words dropped, short
    # phrases) that the teachers label and the student learns with no gold loss; 0: none. Each
    # copy adds the training set's size again to an epoch.
    altered_copies: int = 0

    def __post_init__(self):
        object.__setattr__(self, "teachers", tuple(str(t) for t in self.teachers))
        if not 0 <= self.weight <= 1:
            raise ConfigError(f"objective.distillation.weight={self.weight}: expected a number in [0, 1]")
        if not self.temperature > 0:
            raise ConfigError(f"objective.distillation.temperature={self.temperature}: expected a number > 0")
        if isinstance(self.altered_copies, bool) or not isinstance(self.altered_copies, int) \
                or self.altered_copies < 0:
            raise ConfigError(f"objective.distillation.altered_copies={self.altered_copies!r}: expected a whole "
                              "number >= 0")

    @property
    def on(self) -> bool:
        return bool(self.teachers) and self.weight > 0


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """What each task's loss is made of. These defaults are the run's (configs/default.py builds
    its `objective` section from them)."""

    # SMART's settings (smart.py).
    smart: SmartConfig = SmartConfig()
    # Multiple negatives ranking loss's settings.
    mnrl: MnrlConfig = MnrlConfig()
    # R-Drop's settings (rdrop.py).
    rdrop: RDropConfig = RDropConfig()
    # STS: "mse" on the head's score, or "cosine_embedding" on the two sentence vectors (seed
    # 002; label thresholded at 2.5); it trains no head parameters, so it needs STS's
    # parameter-free `bi_cosine` pair head (scored 2.5 (1 + cos)).
    sts_loss: str = "mse"
    # Learned uncertainty weighting of the task losses (Kendall et al. 2018: exp(-s_t) L_t + s_t,
    # s_t learned).
    uncertainty_weighting: bool = False
    # Distillation from finished runs' outputs.
    distillation: DistillationConfig = DistillationConfig()

    def __post_init__(self):
        if self.sts_loss not in STS_LOSSES:
            raise ConfigError(f"objective.sts_loss={self.sts_loss!r}: expected one of {STS_LOSSES}")

    @classmethod
    def from_dict(cls, d: Mapping) -> "ObjectiveConfig":
        d = dict(d)
        return cls(smart=SmartConfig(**d.pop("smart", {})), mnrl=MnrlConfig(**d.pop("mnrl", {})),
                   rdrop=RDropConfig(**d.pop("rdrop", {})),
                   distillation=DistillationConfig(**d.pop("distillation", {})), **d)

    @property
    def needs_teacher(self) -> bool:
        """SMART's Bregman term needs a moving-average teacher of the weights."""
        return bool(self.smart.tasks) and self.smart.mu > 0

    @property
    def unique_text_tasks(self) -> tuple[str, ...]:
        """Tasks whose batches must never hold a text twice (MNRL's in-batch negatives)."""
        return tuple(self.mnrl.tasks)

    def training_subset(self, data: TaskData) -> TaskData:
        """The records a task trains on: MNRL alone trains on the positive pairs only."""
        if not (self.mnrl.only and data.task in self.mnrl.tasks):
            return data
        return data.subset(np.flatnonzero(np.asarray(positives(data.task, data.labels, self.mnrl.sts_threshold))))

    def extra_params(self, tasks: Sequence[str]) -> dict[str, Array]:
        """Parameters the objective adds to the model's: uncertainty weighting's s_t."""
        if not self.uncertainty_weighting:
            return {}
        return {uncertainty_name(t): jnp.zeros((), jnp.float32) for t in tasks}


def uncertainty_name(task: str) -> str:
    return f"uncertainty_{task}"


def positives(task: str, labels: Array, threshold: float) -> Array:
    """[batch] 1.0 where a pair is positive: a duplicate (Quora), similar enough (STS)."""
    if not TASKS[task].is_classification:
        return (labels >= threshold).astype(jnp.float32)
    return (labels > 0).astype(jnp.float32)


def mnrl(u: Array, v: Array, rows: Array, text_b: Array, scale: float = COSINE_SCALE) -> Array:
    """[batch] multiple negatives ranking loss of each row (0 where rows == 0).

    S_ij = scale cos(u_i, v_j) over the rows taking part; row i's target is column i. A column
    whose second text equals row i's own (same `text_b` row: its token ids, or a packed batch's
    hash of them) is not used as a negative for it.
    """
    un = u / jnp.maximum(jnp.linalg.norm(u, axis=-1, keepdims=True), 1e-8)
    vn = v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-8)
    scores = scale * (un.astype(jnp.float32) @ vn.astype(jnp.float32).T)
    same_text = jnp.all(text_b[:, None, :] == text_b[None, :, :], -1)
    usable = (rows[None, :] > 0) & (~same_text | jnp.eye(len(rows), dtype=bool))
    scores = jnp.where(usable, scores, -1e9)
    losses = optax.softmax_cross_entropy_with_integer_labels(scores, jnp.arange(len(rows)))
    return losses * rows


def cosine_embedding_loss(u: Array, v: Array, labels: Array) -> Array:
    """[batch] torch's CosineEmbeddingLoss (margin 0) with y = +1 when similarity > 2.5."""
    c = cosine(u, v)
    return jnp.where(labels > 2.5, 1.0 - c, jnp.maximum(c, 0.0))


def check_objective(config: ObjectiveConfig, model: ModelConfig) -> None:
    """Refuses losses the model's heads cannot take, and tasks named that are not trained (run
    before any data is loaded)."""
    for name in ("smart", "mnrl", "rdrop"):
        unknown = [t for t in getattr(config, name).tasks if t not in model.tasks]
        if unknown:
            raise ConfigError(f"objective.{name}.tasks: {unknown} not among the trained model.tasks "
                              f"{list(model.tasks)}")
    for task in config.mnrl.tasks:
        if model.pair_encoding(task) != "bi":
            raise ConfigError(f"objective.mnrl.tasks: {task} needs a bi-encoder pair head for MNRL, "
                              f"not model.pair_heads.{task}={model.pair_head(task)!r}")
    if config.sts_loss == "cosine_embedding" and "sts" in model.tasks and model.pair_head("sts") != "bi_cosine":
        raise ConfigError("objective.sts_loss='cosine_embedding' trains the two sentence vectors only, "
                          "so STS must be scored from them: set model.pair_heads.sts='bi_cosine', "
                          f"not {model.pair_head('sts')!r} (its parameters would never train)")
    copies = config.distillation.altered_copies
    if copies and not config.distillation.on:
        raise ConfigError(f"objective.distillation.altered_copies={copies}: altered copies learn the teachers' "
                          "targets alone, so they need objective.distillation.teachers and a weight > 0")
    if copies and config.sts_loss == "cosine_embedding" and "sts" in model.tasks:
        raise ConfigError(f"objective.distillation.altered_copies={copies}: objective.sts_loss='cosine_embedding' "
                          "does not learn the teachers' STS scores, so STS's altered copies would have nothing "
                          "to learn; use sts_loss='mse' or no altered copies")
    if copies and config.mnrl.only and config.mnrl.tasks:
        raise ConfigError(f"objective.distillation.altered_copies={copies}: objective.mnrl.only trains "
                          f"{', '.join(config.mnrl.tasks)} on gold positive pairs alone, where altered copies "
                          "have no gold; turn one of them off")


class Objective:
    """A task's objective: `objective(params, teacher, batch, key, vector_grads=None)` ->
    (loss summed over real rows, number of real rows).

    With MNRL on (`self.mnrl_on`), `vector_grads` = (du, dv, values): the gradients of the
    global batch's MNRL term with respect to this batch's two sentence vectors, and this
    batch's rows' share of its value (see `ranking`); the objective backpropagates the
    gradients through the encoder. Without them, MNRL runs over this batch alone.
    """

    def __init__(self, model: MultiTaskModel, task: str, config: ObjectiveConfig, deterministic: bool = False):
        check_objective(config, model.config)
        self.model, self.task, self.config, self.deterministic = model, task, config, deterministic
        self.smart_on = task in config.smart.tasks
        self.mnrl_on = task in config.mnrl.tasks
        self.rdrop_on = task in config.rdrop.tasks

    def forward(self, params, batch, key, deltas=None):
        return self.model.apply({"params": params}, self.task, batch, deterministic=self.deterministic,
                                perturbations=deltas, rngs={"dropout": key})

    def pair_vectors(self, params, batch, key) -> tuple[Array, Array]:
        """The batch's two sentence vectors ([rows, hidden] each), as the objective computes them
        (same dropout masks: they depend on the key and the example ids only)."""
        return self.forward(params, batch, key).embeddings

    def positive_rows(self, batch) -> Array:
        """[rows] 1.0 for the real rows whose pair is positive: MNRL's rows (gold labels only)."""
        rows = positives(self.task, batch[LABELS], self.config.mnrl.sts_threshold) * batch[WEIGHTS]
        return rows * batch[GOLD] if GOLD in batch else rows

    @staticmethod
    def second_texts(batch) -> Array:
        """[rows, k] what identifies each example's second text: its token ids, or in a packed
        batch a hash of them (`text_key_b`)."""
        if TEXT_KEY_B in batch:
            return batch[TEXT_KEY_B]
        if TOKEN_EXAMPLE + SECOND in batch:
            raise ValueError("a packed batch for MNRL needs text_key_b: pack it with unique_texts=True")
        return batch[INPUT_IDS + SECOND]

    def ranking(self, u: Array, v: Array, rows: Array, text_b: Array, real_rows: Array) -> Array:
        """[rows] each row's MNRL term in a (global) batch, scaled to add to a loss sum that the
        step divides by the number of real rows: weight x real rows / positive rows x its
        ranking loss, so that the MNRL term ends as a mean over the positive pairs; with
        `mnrl.only`, the ranking loss itself (the task then counts its positive rows)."""
        losses = mnrl(u, v, rows, text_b)
        if self.config.mnrl.only:
            return losses
        return self.config.mnrl.weight * real_rows / jnp.maximum(rows.sum(), 1.0) * losses

    def __call__(self, params, teacher, batch, key, vector_grads=None):
        config, task = self.config, self.task
        weights = batch[WEIGHTS]
        count = weights.sum()
        out = self.forward(params, batch, key)

        def task_loss(out):
            kind = TASKS[task].kind
            cosine = kind is REGRESSION and config.sts_loss == "cosine_embedding"
            distilled = config.distillation.on and TARGETS in batch and not cosine
            if GOLD in batch and not distilled:  # its placeholder labels would train as gold
                raise ValueError(f"{task}: a batch with altered copies ({GOLD!r}) needs the teachers' targets "
                                 "and a loss that learns them (check_objective refuses such configs)")
            if cosine:
                return cosine_embedding_loss(*out.embeddings, batch[LABELS])
            gold = kind.loss(out.prediction, batch[LABELS])
            if not distilled:
                return gold
            soft = kind.soft_loss(out.prediction, batch[TARGETS], config.distillation.temperature)
            weight = config.distillation.weight
            if GOLD in batch:  # an altered copy has no gold label: its targets alone teach it
                weight = jnp.where(batch[GOLD] > 0, weight, 1.0)
            return (1 - weight) * gold + weight * soft

        per_example = task_loss(out)
        if self.rdrop_on:  # the same batch again under other dropout masks
            again = self.forward(params, batch, second_pass_key(key))
            per_example = rdrop_loss(task, out.prediction, again.prediction, per_example, task_loss(again),
                                     config.rdrop.alpha)
        total = (per_example * weights).sum()
        if self.mnrl_on:
            rows = self.positive_rows(batch)
            if vector_grads is None:  # this batch alone
                ranking = self.ranking(*out.embeddings, rows, self.second_texts(batch), count).sum()
            else:  # this batch's share of the global batch's MNRL, and its gradient through u, v
                du, dv, values = vector_grads
                surrogate = sum(jnp.sum(g * x.astype(jnp.float32)) for g, x in ((du, out.embeddings[0]),
                                                                              (dv, out.embeddings[1])))
                ranking = values.sum() + surrogate - jax.lax.stop_gradient(surrogate)
            if config.mnrl.only:
                total, count = ranking, rows.sum()
            else:
                total = total + ranking
        if self.smart_on:
            cfg = config.smart
            forward = self.forward
            model = self.model
            frozen = jax.lax.stop_gradient(params)  # the ascent step does not train the weights
            sides = [s for s in ("", "_b") if INPUT_IDS + s in batch]
            shapes = [batch[INPUT_IDS + s].shape + (model.bert_config.hidden_size,) for s in sides]
            noise_ids = [dropout_token_ids(batch, s) for s in sides] if EXAMPLE_IDS in batch else None
            slots = [batch.get(TOKEN_EXAMPLE + s) for s in sides]
            deltas = perturbation(task, lambda d: forward(frozen, batch, key, d).prediction,
                                  out.prediction, shapes, weights, jax.random.fold_in(key, 1), cfg,
                                  noise_ids, slots)
            adversarial = TASKS[task].kind.divergence(forward(params, batch, key, deltas).prediction,
                                               out.prediction)
            total = total + cfg.lambda_s * (adversarial * weights).sum()
            if cfg.mu > 0 and teacher is not None:
                taught = jax.lax.stop_gradient(forward(teacher, batch, key).prediction)
                total = total + cfg.mu * (TASKS[task].kind.divergence(out.prediction, taught) * weights).sum()
        if config.uncertainty_weighting:
            s = params[uncertainty_name(task)]
            total = jnp.exp(-s) * total + s * count
        return total, count


def make_objective(model: MultiTaskModel, task: str, config: ObjectiveConfig,
                   deterministic: bool = False) -> Objective:
    """(params, teacher, batch, key[, vector_grads]) -> (loss summed over real rows, real rows)."""
    return Objective(model, task, config, deterministic)
