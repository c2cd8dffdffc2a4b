"""A run's configuration, typed: what configs/*.py describe, checked before anything is loaded.

configs/default.py is the one source of the defaults; the section dataclasses (ModelConfig,
ScheduleConfig, ObjectiveConfig, OptimizerConfig) carry the same defaults so that code building
them directly gets what a run gets (tests/test_configs.py keeps the two equal).
`RunConfig.from_dict` reads a ConfigDict or a saved config.json, including those written
before the objective's settings moved under `objective`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Mapping

import ml_collections

from mtbert_jax.data.batching import bucket_lengths
from mtbert_jax.data.packing import BatchLayout
from mtbert_jax.data.task_schedules import ALL_TASK_KINDS, ScheduleConfig
from mtbert_jax.errors import ConfigError
from mtbert_jax.model.config import ModelConfig
from mtbert_jax.model.mixed_precision import COMPUTE_DTYPES
from mtbert_jax.tasks import TASKS
from mtbert_jax.training.objectives import MnrlConfig, ObjectiveConfig, check_objective
from mtbert_jax.training.optimizer import OptimizerConfig
from mtbert_jax.training.rdrop import RDropConfig
from mtbert_jax.training.smart import SmartConfig

# Saved configs from before the `objective` group: these top-level keys moved into it.
_OBJECTIVE_KEYS = ("smart", "mnrl", "sts_loss", "uncertainty_weighting")
_POSITIVE = ("max_length", "bucket_step", "num_epochs", "accumulation_steps", "eval_batch_size",
             "log_every_steps", "checkpoint_every_steps", "keep_checkpoints")
_NON_NEGATIVE = ("frozen_epochs", "max_steps", "max_train_records", "eval_every_steps", "early_stopping_patience",
                 "early_stopping_min_delta", "profile_start_step", "profile_num_steps")
# What a run watched from elsewhere writes, added after the first saved configs: their defaults.
_WATCHING = {"eval_every_steps": 0, "early_stopping_patience": 0, "early_stopping_min_delta": 0.0,
             "tensorboard": True, "wandb": "disabled", "wandb_project": "", "wandb_name": "",
             "profile_start_step": 0, "profile_num_steps": 0}
WANDB_MODES = ("disabled", "offline", "online")


def check_wandb_mode(mode: str) -> None:
    """ConfigError unless `mode` is one of WANDB_MODES (the config's `wandb` field)."""
    if mode not in WANDB_MODES:
        raise ConfigError(f"wandb={mode!r}: expected one of {list(WANDB_MODES)}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    checkpoint: str
    data_dir: str
    cache_dir: str
    seed: int
    max_length: int
    bucket_step: int
    packing: bool
    compute_dtype: str
    num_epochs: int
    frozen_epochs: int
    max_steps: int
    max_train_records: int
    accumulation_steps: int
    eval_batch_size: int
    log_every_steps: int
    checkpoint_every_steps: int
    keep_checkpoints: int
    eval_every_steps: int
    early_stopping_patience: int
    early_stopping_min_delta: float
    tensorboard: bool
    wandb: str
    wandb_project: str
    wandb_name: str
    profile_start_step: int
    profile_num_steps: int
    loss_weights: Mapping[str, float]
    model: ModelConfig
    schedule: ScheduleConfig
    objective: ObjectiveConfig
    optimizer: OptimizerConfig

    def __post_init__(self):
        for name in _POSITIVE:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected a number > 0")
        for name in _NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected a number >= 0")
        unknown = sorted(set(self.loss_weights) - set(TASKS))
        if unknown:
            raise ConfigError(f"loss_weights names unknown task(s) {unknown}: expected some of {sorted(TASKS)}")
        combiner = self.optimizer.combiner
        if combiner in ("pcgrad", "gse"):
            if self.schedule.kind not in ALL_TASK_KINDS:
                raise ConfigError(
                    f"optimizer.combiner={combiner!r} needs a batch of every task in every step, but "
                    f"schedule.kind={self.schedule.kind!r} trains one task per step; use one of {ALL_TASK_KINDS}")
            if self.schedule.curriculum_epochs:
                raise ConfigError(f"optimizer.combiner={combiner!r} cannot run with a curriculum "
                                  "(its first epochs train one task)")
            if len(self.model.tasks) < 2:
                raise ConfigError(f"optimizer.combiner={combiner!r} needs two or more tasks")
        check_objective(self.objective, self.model)
        bi_encoded = [t for t in self.model.tasks if TASKS[t].is_pair and self.model.pair_encoding(t) == "bi"]
        if self.schedule.swap_pairs and bi_encoded:
            raise ConfigError(f"schedule.swap_pairs swaps the sentences inside cross-encoded pairs, but "
                              f"{bi_encoded} use bi-encoder heads ({ {t: self.model.pair_head(t) for t in bi_encoded} })")
        if self.profile_num_steps and self.profile_start_step < 1:
            raise ConfigError(f"profile_start_step={self.profile_start_step}: steps count from 1 (the profile window "
                              f"traces steps profile_start_step .. + profile_num_steps - 1)")
        check_wandb_mode(self.wandb)
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"compute_dtype={self.compute_dtype!r}: expected one of {list(COMPUTE_DTYPES)}")

    @classmethod
    def from_dict(cls, config: Any) -> "RunConfig":
        """From a ConfigDict, or a dict such as a workdir's saved config (older layouts too)."""
        d = upgrade(config.to_dict() if hasattr(config, "to_dict") else dict(config))
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(d) - fields), sorted(fields - set(d))
        if unknown or missing:
            raise ConfigError(f"config: unknown field(s) {unknown or 'none'}, missing field(s) "
                              f"{missing or 'none'} (see configs/default.py)")
        _check_finite(d)
        objective = dict(d["objective"])
        _check_fields("objective.smart", SmartConfig, objective.get("smart", {}))
        _check_fields("objective.mnrl", MnrlConfig, objective.get("mnrl", {}))
        _check_fields("objective.rdrop", RDropConfig, objective.get("rdrop", {}))
        for name, section in (("model", ModelConfig), ("schedule", ScheduleConfig),
                              ("objective", ObjectiveConfig), ("optimizer", OptimizerConfig)):
            _check_fields(name, section, d[name])
        sections = {"model": ModelConfig(**d["model"]), "schedule": ScheduleConfig(**d["schedule"]),
                    "objective": ObjectiveConfig.from_dict(objective),
                    "optimizer": OptimizerConfig(**d["optimizer"])}
        return cls(**{**d, **sections, "loss_weights": dict(d["loss_weights"])})

    def layout(self) -> BatchLayout:
        """How records become batches: padded to length buckets, or packed."""
        return BatchLayout(bucket_lengths(self.max_length, self.bucket_step), self.packing)

    def task_loss_weights(self, tasks) -> dict[str, float]:
        return {t: float(self.loss_weights.get(t, 1.0)) for t in tasks}


def section_config(section: type) -> ml_collections.ConfigDict:
    """A section dataclass's defaults as a ConfigDict: nested sections and mappings become
    ConfigDicts, an unset (None) field a placeholder of its annotated type, so that
    --config.SECTION.FIELD=VALUE can set it."""
    hints = typing.get_type_hints(section)
    c = ml_collections.ConfigDict()
    defaults = section()
    for field in dataclasses.fields(section):
        value = getattr(defaults, field.name)
        if dataclasses.is_dataclass(value):
            c[field.name] = section_config(type(value))
        elif isinstance(value, Mapping):
            c[field.name] = ml_collections.ConfigDict(dict(value))
        elif value is None:
            kinds = [t for t in typing.get_args(hints[field.name]) if t is not type(None)]
            c[field.name] = ml_collections.config_dict.placeholder(kinds[0])
        else:
            c[field.name] = value
    return c


def dotted_leaves(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict's leaves by dotted path: {"model": {"pooling": "mean"}} -> {"model.pooling": "mean"}
    (a leaf at the top, not a dict, is keyed by `prefix` itself)."""
    if isinstance(d, Mapping):
        return {k: v for key, sub in d.items()
                for k, v in dotted_leaves(sub, f"{prefix}.{key}" if prefix else str(key)).items()}
    return {prefix: d}


def _check_finite(d: Mapping) -> None:
    """Every number in the configuration is finite, and so are the sums the run forms of them
    (the loss weights'): an infinite learning rate or weight passes every `> 0` check and
    trains to NaN."""
    for key, value in dotted_leaves(d).items():
        numbers = value if isinstance(value, (list, tuple)) else [value]
        for number in numbers:
            if isinstance(number, float) and not math.isfinite(number):
                raise ConfigError(f"config: {key}={number}: expected a finite number")
    weights = [float(w) for w in dict(d.get("loss_weights", {})).values() if isinstance(w, (int, float))]
    if not math.isfinite(sum(weights)):
        raise ConfigError(f"config: loss_weights sum to {sum(weights)}: expected a finite sum")


def _check_fields(name: str, section: type, values: Mapping) -> None:
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(section)})
    if unknown:
        raise ConfigError(f"config: {name} has no field(s) {unknown} (see configs/default.py)")


def upgrade(saved: Mapping) -> dict:
    """A saved config in today's layout: runs written before the objective group still load,
    and go on as they started."""
    d = dict(saved)
    if any(k in d for k in _OBJECTIVE_KEYS) and "objective" not in d:
        d["objective"] = {k: d.pop(k) for k in _OBJECTIVE_KEYS if k in d}
    d.setdefault("packing", False)  # runs from before packing
    for key, default in _WATCHING.items():  # runs from before these settings
        d.setdefault(key, default)
    # Runs from before pair swapping scored and trained one sentence order.
    if "model" in d:
        d["model"] = {"symmetric_pairs": False, **d["model"]}
    if "schedule" in d:
        d["schedule"] = {"swap_pairs": False, **d["schedule"]}
    # Packed runs from before balanced batches rounded rows to a step; the rows now follow the data.
    d.pop("pack_row_step", None)
    if "schedule" in d:
        schedule = dict(d["schedule"])
        if "method3_carry_over" in schedule:  # the field's earlier name
            schedule["carry_over_passes"] = schedule.pop("method3_carry_over")
        # Runs saved before all_tasks_until_smallest restarted its passes each epoch carried them
        # over: a resumed one goes on as it started.
        schedule.setdefault("carry_over_passes", True)
        d["schedule"] = schedule
    return d
