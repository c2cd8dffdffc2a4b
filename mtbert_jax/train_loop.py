"""train_and_evaluate(config, workdir): the whole run, resumable at any point.

Phases: load the checkpoint and data; build the model, schedule and optimizer; restore the
latest checkpoint if the workdir has one; train epoch by epoch (evaluating on dev after each,
keeping the best checkpoint by overall score); write metrics (JSON lines) and plots.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from mtbert_jax import distributed
from mtbert_jax.batching import bucket_lengths
from mtbert_jax.checkpointing import Checkpoints
from mtbert_jax.evaluation import labels_from_outputs, make_predict, overall_score, predict, task_metrics
from mtbert_jax.hf_checkpoint import load_hf_checkpoint, resolve_checkpoint_dir
from mtbert_jax.model_config import ModelConfig
from mtbert_jax.multitask_loader import MultiTaskLoader
from mtbert_jax.multitask_model import init_model
from mtbert_jax.objectives import ObjectiveConfig, positives, uncertainty_name
from mtbert_jax.optimizer import OptimizerConfig, make_optimizer
from mtbert_jax.smart import SmartConfig
from mtbert_jax.param_groups import parameter_report
from mtbert_jax.schedules import ALL_TASK_KINDS, Schedule, ScheduleConfig
from mtbert_jax.task_files import resolve_data_dir
from mtbert_jax.tokenized_data import TaskData, load_task_data
from mtbert_jax.tokenizer import BertTextTokenizer
from mtbert_jax.train_step import StepRunner, TrainState


class TrainingError(RuntimeError):
    """The run cannot go on (bad configuration, a NaN loss); the message says why."""


def model_config_from(config: ml_collections.ConfigDict) -> ModelConfig:
    return ModelConfig(**config.model.to_dict())


def validate(config: ml_collections.ConfigDict) -> None:
    """Configuration errors that would otherwise surface deep inside the run."""
    combiner = config.optimizer.combiner
    if combiner in ("pcgrad", "gse"):
        if config.schedule.kind not in ALL_TASK_KINDS:
            raise TrainingError(
                f"optimizer.combiner={combiner!r} needs a batch of every task in every step, but "
                f"schedule.kind={config.schedule.kind!r} trains one task per step; use one of {ALL_TASK_KINDS}")
        if config.schedule.curriculum_epochs:
            raise TrainingError(f"optimizer.combiner={combiner!r} cannot run with a curriculum "
                                "(its first epochs train one task)")
        if len(config.model.tasks) < 2:
            raise TrainingError(f"optimizer.combiner={combiner!r} needs two or more tasks")
    divisor = distributed.global_batch_divisor() * config.accumulation_steps
    if config.schedule.batch_size % divisor:
        raise TrainingError(f"schedule.batch_size={config.schedule.batch_size} must divide by "
                            f"devices x accumulation_steps = {divisor}")


def objective_config_from(config: ml_collections.ConfigDict) -> ObjectiveConfig:
    return ObjectiveConfig(
        smart=SmartConfig(**{**config.smart.to_dict(), "tasks": tuple(config.smart.tasks)}),
        mnrl_tasks=tuple(config.mnrl.tasks), mnrl_weight=config.mnrl.weight, mnrl_only=config.mnrl.only,
        mnrl_sts_threshold=config.mnrl.sts_threshold, sts_loss=config.sts_loss,
        uncertainty_weighting=config.uncertainty_weighting)


def _positive_pairs(data: TaskData, objective: ObjectiveConfig) -> TaskData:
    """MNRL alone trains on the positive pairs only."""
    return data.subset(np.flatnonzero(np.asarray(
        positives(data.task, data.labels, objective.mnrl_sts_threshold))))


def _take(data: TaskData, n: int) -> TaskData:
    """The first n records (quick runs)."""
    return data if not n or n >= len(data) else data.subset(np.arange(n))


class MetricsLog:
    """metrics.jsonl in the workdir (and TensorBoard events when tensorboardX is installed);
    on resume, entries past the restored step are dropped."""

    def __init__(self, path: Path, resume_step: int, enabled: bool):
        self.path, self.enabled, self.tensorboard = path, enabled, None
        if enabled and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))
        if enabled:
            try:
                from tensorboardX import SummaryWriter
                self.tensorboard = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:
                pass

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for group in ("loss", "dev"):
                for task, value in record.get(group, {}).items():
                    for name, number in (value.items() if isinstance(value, dict) else [("", value)]):
                        self.tensorboard.add_scalar(f"{group}/{task}{'/' + name if name else ''}",
                                                    number, record["step"])
            for name in ("examples_per_second", "dev_overall", "pcgrad_conflicts"):
                if name in record:
                    self.tensorboard.add_scalar(name, record[name], record["step"])
            self.tensorboard.flush()


def evaluate(predict_fn, params, datasets: dict[str, TaskData], batch_size: int, buckets) -> dict:
    results = {}
    for task, data in datasets.items():
        outputs = predict(predict_fn, params, data, batch_size, buckets)
        results[task] = task_metrics(task, labels_from_outputs(task, outputs), data.labels)
    return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Trains as `config` says, in `workdir`; re-running the same command resumes."""
    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    validate(config)
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")

    # --- model and data
    checkpoint_dir = resolve_checkpoint_dir(config.checkpoint)
    bert_config, bert_params, report = load_hf_checkpoint(checkpoint_dir, config.compute_dtype)
    model_config = model_config_from(config)
    tokenizer = BertTextTokenizer(checkpoint_dir)
    data_dir = resolve_data_dir(config.data_dir or None)
    load = lambda task, split: load_task_data(  # noqa: E731
        task, split, data_dir, tokenizer, config.max_length, model_config.pair_encoding(task),
        cache_dir=config.cache_dir or None)
    objective = objective_config_from(config)
    train_data = {t: _take(load(t, "train"), config.max_train_records) for t in model_config.tasks}
    if objective.mnrl_only:  # MNRL alone trains on the positive pairs only
        train_data = {t: _positive_pairs(d, objective) if t in objective.mnrl_tasks else d
                      for t, d in train_data.items()}
    dev_data = {t: load(t, "dev") for t in model_config.tasks}
    log = print if is_main else (lambda *a, **k: None)
    log(report.summary())
    for data in [*train_data.values(), *dev_data.values()]:
        log(data.summary())

    buckets = bucket_lengths(config.max_length, config.bucket_step)
    total_epochs = config.num_epochs + config.frozen_epochs
    schedule = Schedule(ScheduleConfig(**config.schedule.to_dict()), {t: len(d) for t, d in train_data.items()},
                        total_epochs, config.seed)
    loader = MultiTaskLoader(train_data, schedule, buckets, config.seed,
                             unique_text_tasks=tuple(objective.mnrl_tasks))
    steps_per_epoch = [loader.steps_in_epoch(e) for e in range(total_epochs)]
    stage_ends = [sum(steps_per_epoch[:config.num_epochs]), sum(steps_per_epoch)]
    if config.max_steps:
        stage_ends = [min(s, config.max_steps) for s in stage_ends]
    key = jax.random.PRNGKey(config.seed)
    init_key, dropout_key, pcgrad_key = jax.random.split(key, 3)
    model, params = init_model(bert_config, model_config, init_key, bert_params)
    if objective.uncertainty_weighting:
        params |= {uncertainty_name(t): jnp.zeros((), jnp.float32) for t in model_config.tasks}
    log(parameter_report(params))
    # SMART's Bregman term needs a moving-average teacher of the weights.
    use_teacher = bool(objective.smart.tasks) and objective.smart.mu > 0
    tasks = tuple(t for t in model_config.tasks if t in schedule.tasks)
    loss_weights = dict(config.loss_weights.to_dict())
    if config.schedule.kind == "method1":
        loss_weights = schedule.loss_weights()
    tasks_per_step = len(tasks) if schedule.all_tasks_per_step else 1

    def build(stage: int):
        opt_config = OptimizerConfig(**config.optimizer.to_dict())
        steps = stage_ends[0] if stage == 0 else stage_ends[1] - stage_ends[0]
        if stage == 1:
            opt_config = dataclasses.replace(opt_config, freeze_encoder=True)
        optimizer = make_optimizer(opt_config, params, tasks, max(steps, 1), tasks_per_step, pcgrad_key)
        # A frozen encoder is not differentiated at all (its update would be zero anyway).
        runner = StepRunner(model, optimizer, tasks, loss_weights, config.accumulation_steps,
                            objective=objective, total_steps=stage_ends[-1],
                            frozen=("bert",) if opt_config.freeze_encoder else ())
        return optimizer, runner

    # --- resume
    checkpoints = Checkpoints(workdir, config.keep_checkpoints)
    step, best_score, stage = 0, -math.inf, 0
    latest = checkpoints.latest_step()
    if latest is not None:
        meta = checkpoints.meta(checkpoints.latest, latest)
        stage, best_score = meta["stage"], meta["best_score"]
    optimizer, runner = build(stage)
    state = TrainState(params, optimizer.tx.init(params), jnp.zeros((), jnp.int32),
                       params if use_teacher else None)
    if latest is not None:
        restored = checkpoints.restore(checkpoints.latest, latest,
                                       {"train": state, "loader": loader.state_dict()})
        state = TrainState(*restored["train"])
        loader.load_state_dict(restored["loader"])
        loader.load_padding_state(meta.get("padding", {}))  # absent from older checkpoints
        step = int(state.step)
        log(f"resumed from {workdir / 'checkpoints'} at step {step} (epoch {loader.epoch + 1})")
    metrics_log = MetricsLog(workdir / "metrics.jsonl", step, is_main)
    planned = f"{sum(steps_per_epoch)} steps in {total_epochs} epochs"
    if stage_ends[-1] < sum(steps_per_epoch):
        planned = f"{stage_ends[-1]} steps (max_steps; {planned})"
    log(f"{len(tasks)} tasks, {planned}, {jax.device_count()} device(s)")

    def save(score: Optional[float] = None):
        host_state = jax.device_get(distributed.unreplicate(replicated))
        meta = {"stage": stage, "best_score": best_score, "epoch": loader.epoch, "step": step,
                "padding": loader.padding_state(), "config": json.loads(config.to_json_best_effort())}
        checkpoints.save(step, {"train": host_state, "loader": loader.state_dict()},
                         meta, score)

    replicated = distributed.replicate(state)
    dev_predict = make_predict(model)
    results: dict = {}
    while loader.epoch < total_epochs and step < stage_ends[-1]:
        epoch = loader.epoch
        if stage == 0 and (epoch >= config.num_epochs or step >= stage_ends[0]):
            stage = 1  # two-stage recipe: continue with the encoder frozen, fresh optimizer state
            optimizer, runner = build(stage)
            current = distributed.unreplicate(replicated)
            replicated = distributed.replicate(TrainState(
                current.params, optimizer.tx.init(current.params), jnp.asarray(step, jnp.int32), current.teacher))
            log(f"epoch {epoch + 1}: encoder frozen from here on")
        stage_end = stage_ends[stage]
        bar = tqdm(total=loader.steps_in_epoch(), initial=loader.step, disable=not is_main,
                   desc=f"epoch {epoch + 1}/{total_epochs}", unit="step")
        window_examples, window_start, window_losses = 0.0, time.perf_counter(), {}
        for batches in loader:
            sharded = {t: distributed.split_for_devices(distributed.process_shard(b)) for t, b in batches.items()}
            replicated, metrics = runner(replicated, sharded, step, dropout_key)
            step += 1
            losses = {t: float(v[0]) for t, v in metrics["loss"].items()}
            for task, value in losses.items():
                if not math.isfinite(value):
                    raise TrainingError(f"the {task} loss is {value} at step {step} (epoch {epoch + 1}); "
                                        "stopping without saving (try a lower learning rate)")
            window_examples += sum(float(b["weights"].sum()) for b in batches.values())
            for task, value in losses.items():
                window_losses.setdefault(task, []).append(value)
            bar.update(1)
            if step % config.log_every_steps == 0 or step == stage_end:
                elapsed = time.perf_counter() - window_start
                mean_losses = {t: float(np.mean(v)) for t, v in sorted(window_losses.items())}
                record = {"step": step, "epoch": epoch + 1, "loss": mean_losses,
                          "examples_per_second": window_examples / max(elapsed, 1e-9),
                          "grad_norm": np.asarray(metrics["grad_norm"][0]).tolist(),
                          "padding_efficiency": loader.padding.efficiency}
                if "pcgrad_conflicts" in metrics:
                    record["pcgrad_conflicts"] = int(metrics["pcgrad_conflicts"][0])
                    record["pcgrad_cosines"] = np.asarray(metrics["pcgrad_cosines"][0]).round(4).tolist()
                metrics_log.write(record)
                bar.set_postfix({**{t: f"{v:.3f}" for t, v in mean_losses.items()},
                                 "ex/s": f"{record['examples_per_second']:.1f}"})
                window_examples, window_start, window_losses = 0.0, time.perf_counter(), {}
            if step % config.checkpoint_every_steps == 0:
                save()
            if step >= stage_end:
                break
        bar.close()
        if step >= stage_end and loader.step != 0 and stage_end != stage_ends[-1]:
            loader.epoch, loader.step = loader.epoch + 1, 0  # max_steps ended the stage mid-epoch
        params_now = distributed.unreplicate(replicated).params
        results = evaluate(dev_predict, params_now, dev_data, config.eval_batch_size, buckets)
        score = overall_score(results)
        best_score = max(best_score, score)
        metrics_log.write({"step": step, "epoch": epoch + 1, "dev": results, "dev_overall": score})
        log(f"epoch {epoch + 1}: dev " + ", ".join(
            f"{t} {next(iter(m.values())):.4f}" for t, m in results.items()) + f"; overall {score:.4f}")
        save(score)
    checkpoints.close()
    if is_main:
        from mtbert_jax.plots import plot_training_curves
        plot_training_curves(workdir / "metrics.jsonl", workdir / "plots")
    return {"step": step, "dev": results, "best_score": best_score}
