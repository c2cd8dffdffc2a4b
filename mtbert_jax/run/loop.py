"""train_and_evaluate(config, workdir): the whole run, resumable at any point.

Phases: check the configuration; load the encoder and the data; build the schedule, the model
and the training stages; restore the latest checkpoint if the workdir has one; train epoch by
epoch (dev evaluation after each, the best checkpoint kept by overall score); plots at the end.
Each method's special knowledge lives beside it: the objective (MNRL's training subset, extra
parameters, SMART's teacher), the stages (the frozen-encoder epochs), the loader (its position).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable, Mapping, Optional

import jax
import numpy as np
from tqdm import tqdm

from mtbert_jax import batch as batch_layout
from mtbert_jax.checkpoints.hf import load_hf_checkpoint, resolve_checkpoint_dir
from mtbert_jax.checkpoints.tokenizer import BertTextTokenizer
from mtbert_jax.data.loader import MultiTaskLoader
from mtbert_jax.data.prefetch import Prefetcher
from mtbert_jax.data.task_files import resolve_data_dir
from mtbert_jax.data.task_schedules import Schedule
from mtbert_jax.data.tokenized import TaskData, load_task_data
from mtbert_jax.errors import CheckpointError, ConfigError, TrainingError, first_line
from mtbert_jax.evaluation.metrics import overall_score
from mtbert_jax.evaluation.predict import dataset_metrics, make_predict
from mtbert_jax.model.multitask import init_model
from mtbert_jax.run import atomic
from mtbert_jax.run.build import concrete_dtype, encoder_config
from mtbert_jax.run.checkpointing import Checkpoints, digest_mismatch, saved_steps
from mtbert_jax.run.config import RunConfig, dotted_leaves
from mtbert_jax.run.metrics_log import LogWindow, MetricsLog
from mtbert_jax.run.preemption import Preempted, StopSignals
from mtbert_jax.run.profile_window import ProfileWindow
from mtbert_jax.run.stages import FROZEN_ENCODER, Stages
from mtbert_jax.run.trackers import make_trackers
from mtbert_jax.run.workdir_lock import WorkdirLock
from mtbert_jax.training import distributed, flops
from mtbert_jax.training.param_groups import parameter_report
from mtbert_jax.training.step import TrainState


@dataclasses.dataclass
class RunData:
    """The tokenized splits a run trains and evaluates on: {task: TaskData}."""

    train: Mapping[str, TaskData]
    dev: Mapping[str, TaskData]


def load_run_data(run: RunConfig, tokenizer: BertTextTokenizer) -> RunData:
    """Every task's train and dev split from the data directory (train cut to max_train_records)."""
    data_dir = resolve_data_dir(run.data_dir or None)

    def load(task, split):
        data = load_task_data(task, split, data_dir, tokenizer, run.max_length, run.model.pair_encoding(task),
                              cache_dir=run.cache_dir or None)
        n = run.max_train_records if split == "train" else 0
        return data.subset(np.arange(n)) if 0 < n < len(data) else data

    return RunData({t: load(t, "train") for t in run.model.tasks}, {t: load(t, "dev") for t in run.model.tasks})


def train_and_evaluate(config, workdir: str | Path, data: Optional[RunData] = None) -> dict:
    """Trains as `config` (a ConfigDict or dict) says, in `workdir`; re-running resumes.
    `data` replaces the data directory's task files (tests, notebooks)."""
    started = time.perf_counter()  # the metrics' run_seconds count loading and compiling too
    run = RunConfig.from_dict(config)
    divisor = distributed.global_batch_divisor() * run.accumulation_steps  # equal rows per device and micro-batch
    if run.schedule.batch_size % divisor:
        raise ConfigError(f"schedule.batch_size={run.schedule.batch_size} must divide by devices x "
                          f"accumulation_steps = {divisor}")
    workdir, is_main = Path(workdir), jax.process_index() == 0
    log = print if is_main else (lambda *a, **k: None)
    run = resolve_auto_dtype(run, workdir, log)
    checkpoint_dir = resolve_checkpoint_dir(run.checkpoint)
    bert_config, bert_params, report = load_hf_checkpoint(checkpoint_dir, run.compute_dtype)
    bert_config = encoder_config(run, bert_config)
    if run.max_length > bert_config.max_position_embeddings:
        raise ConfigError(f"max_length={run.max_length} is more than the checkpoint's "
                          f"max_position_embeddings={bert_config.max_position_embeddings}")
    # Only now that the run is known to be valid: a refused run leaves the workdir as it was.
    with WorkdirLock(workdir, log, enabled=is_main):
        check_resumable(run, workdir, log)
        return _train(run, workdir, data, checkpoint_dir, bert_config, bert_params, report, log, started)


def _train(run: RunConfig, workdir: Path, data: Optional[RunData], checkpoint_dir, bert_config, bert_params,
           report, log, started: float) -> dict:
    is_main = jax.process_index() == 0
    # --- the encoder and the data
    log(report.summary())
    data = data or load_run_data(run, BertTextTokenizer(checkpoint_dir))
    if is_main:  # once the data is known to be good: a refused run leaves the workdir's files as they were
        atomic.write_text(workdir / "config.json", json.dumps(dataclasses.asdict(run), indent=2) + "\n")
    train_data = {t: run.objective.training_subset(d) for t, d in data.train.items()}
    if run.objective.distillation.on:
        from mtbert_jax.run.distillation import with_altered_copies, with_teacher_targets
        train_data = with_teacher_targets(run, train_data, workdir, run.eval_batch_size, is_main, log)
        if run.objective.distillation.altered_copies:
            train_data = with_altered_copies(run, train_data, workdir, run.eval_batch_size, is_main, log)
    for d in [*train_data.values(), *data.dev.values()]:
        log(d.summary())

    # --- schedule, model and training stages
    layout = run.layout()
    schedule = Schedule(run.schedule, {t: len(d) for t, d in train_data.items()},
                        run.num_epochs + run.frozen_epochs, run.seed)
    loader = MultiTaskLoader(train_data, schedule, layout, run.seed,
                             unique_text_tasks=run.objective.unique_text_tasks,
                             shards=distributed.global_batch_divisor() * run.accumulation_steps)
    init_key, dropout_key, pcgrad_key = jax.random.split(jax.random.PRNGKey(run.seed), 3)
    model, params = init_model(bert_config, run.model, init_key, bert_params)
    params |= run.objective.extra_params(run.model.tasks)
    log(parameter_report(params))
    dev_predict = make_predict(model)

    def dev_metrics(params) -> dict:
        return dataset_metrics(dev_predict, distributed.unreplicate(params), data.dev, run.eval_batch_size, layout,
                               run.model.symmetric_pairs, progress="dev" if is_main else "")

    trainer = Trainer(run, workdir, loader, Stages(run, schedule, loader, model, params, pcgrad_key),
                      dropout_key, log, started, dev_metrics, bert_config)
    trainer.resume()

    # --- train and evaluate, epoch by epoch (and every eval_every_steps)
    def more_to_train() -> bool:
        return (loader.epoch < run.num_epochs + run.frozen_epochs and trainer.step < trainer.stages.last_step
                and not trainer.stopped_early)

    with StopSignals() as trainer.stop:
        try:
            while more_to_train():
                epoch = trainer.train_epoch()
                trainer.evaluate(epoch, epoch_end=True)  # its dev record and checkpoint: nothing more to save
                if more_to_train() and (name := trainer.stop.agreed(trainer.step, now=True)):
                    raise Preempted(trainer.step, name)
        except Preempted:
            trainer.close()
            raise
        except EarlyStopped as e:
            log(str(e))
    # Closed on success only: closing orbax under reads still in flight after a failure makes its
    # threads print "Event loop is closed" tracebacks.
    trainer.close()
    if is_main:
        from mtbert_jax.evaluation.plots import plot_training_curves
        plot_training_curves(workdir / "metrics.jsonl", workdir / "plots")
    log(trainer.summary())
    return {"step": trainer.step, "dev": trainer.results, "best_score": trainer.best_score}


# Steps the host may dispatch ahead of the devices. Unbounded, it runs up to a whole logging window
# ahead (log_every_steps), and a stop signal waits for all of them: minutes for a base-size model
# on a CPU, where a preemptible TPU VM gives 30 seconds. Two keep the devices fed.
MAX_STEPS_IN_FLIGHT = 2


class EarlyStopped(Exception):
    """The run stopped after early_stopping_patience evaluations without improvement (saved)."""


# What a checkpoint's shapes and meaning depend on: a run resumed with any of them changed is refused.
# (packing too: a packed pass orders its records differently, so the saved position would not
# point at the same records.)
RESUME_FIELDS = ("checkpoint", "compute_dtype", "seed", "model", "objective", "optimizer.combiner",
                 "optimizer.freeze_encoder", "optimizer.ema_decay", "schedule.kind", "schedule.batch_size",
                 "packing")


def saved_config(workdir: Path) -> tuple[Optional[dict], Path]:
    """(the saved configuration of the run whose checkpoints the workdir holds, where it was
    read): config.json, or, when that is gone, the newest checkpoint's own copy. (None, path)
    when the workdir has no checkpoint; a ConfigError when neither copy reads."""
    steps = saved_steps(workdir / "checkpoints")
    if not steps:
        return None, workdir / "config.json"
    candidates = [workdir / "config.json"] + [workdir / "checkpoints" / str(s) / "meta" / "metadata"
                                              for s in reversed(steps)]
    for path in candidates:
        try:
            saved = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: cannot read the saved configuration of the run to resume "
                              f"({first_line(e)})") from None
        return (saved["config"] if path.name == "metadata" else saved), path
    raise ConfigError(f"{workdir}: holds checkpoints but no saved configuration (config.json nor a "
                      "checkpoint's meta/metadata); use a new --workdir")


def resolve_auto_dtype(run: RunConfig, workdir: Path, log) -> RunConfig:
    """compute_dtype "auto" made concrete (saved so in config.json): bfloat16 where this machine
    multiplies it fast, float32 elsewhere; a resumed run keeps the dtype it started with."""
    if run.compute_dtype != "auto":
        return run
    try:
        saved = (saved_config(workdir)[0] or {}).get("compute_dtype")
    except ConfigError:
        saved = None  # check_resumable names the unreadable file
    run, why = concrete_dtype(run, saved)
    log(f"compute dtype: {run.compute_dtype} ({why})")
    return run


# Fields a resumed run may change, each said in one line: the run's length.
LENGTH_FIELDS = ("max_steps", "num_epochs", "frozen_epochs")


def check_resumable(run: RunConfig, workdir: Path, log=print) -> None:
    """Refuses, before anything is written, to resume a workdir's checkpoints under a config that
    changes what they hold; names the differing fields in one line."""
    saved, saved_path = saved_config(workdir)
    if saved is None:
        return
    try:
        saved = dataclasses.asdict(RunConfig.from_dict(saved))
    except (ValueError, ConfigError) as e:
        raise ConfigError(f"{saved_path}: cannot read the saved configuration of the run to resume ({e})") from None
    now = dataclasses.asdict(run)

    def at(d, dotted):
        for part in dotted.split("."):
            d = d[part]
        return d

    changed, flags = [], []
    for field in RESUME_FIELDS:
        before, after = dotted_leaves(at(saved, field), field), dotted_leaves(at(now, field), field)
        for k in sorted(set(before) | set(after)):
            was, wanted = before.get(k), after.get(k)
            if json.dumps(was, sort_keys=True, default=str) != json.dumps(wanted, sort_keys=True, default=str):
                changed.append(f"{k} {was!r} -> {wanted!r}")
                # A saved scalar can be given back on the command line (a default that changed
                # since the run started: packing, model.pooling); anything else is in config.json.
                if isinstance(was, (str, int, float, bool)):
                    flags.append(f"--config.{k}={was}")
    if changed:
        hint = " ".join(flags) if len(flags) == len(changed) else f"the configuration saved in {saved_path}"
        raise ConfigError(f"{workdir} holds checkpoints of a run configured otherwise: " + "; ".join(changed)
                          + f" (use a new --workdir, or {hint})")
    lengthened = [f"{k} {saved[k]} -> {now[k]}" for k in LENGTH_FIELDS if saved[k] != now[k]]
    if lengthened:  # allowed (a run cut short, continued), but it changes the rest of the run: said
        log(f"resuming with {', '.join(lengthened)}: the learning-rate schedules are fitted to the new "
            "length from here on, so the run will not match one started with these values")


class Trainer:
    """The run's progress (stage, step, best score, replicated state) and what changes it:
    resuming, training an epoch, saving, and the dev record at each epoch's end."""

    def __init__(self, run: RunConfig, workdir: Path, loader: MultiTaskLoader, stages: Stages,
                 dropout_key: jax.Array, log, started: Optional[float] = None,
                 dev_metrics: Optional[Callable[[dict], dict]] = None, encoder_shape=None):
        self.run, self.workdir, self.loader, self.stages = run, workdir, loader, stages
        self.started = time.perf_counter() if started is None else started
        # dev_metrics(replicated parameters) -> {task: metrics}; encoder_shape: the encoder's
        # config, for the model FLOPs of each step (None: no FLOP figures).
        self.dev_metrics, self.encoder_shape = dev_metrics, encoder_shape
        self.results: dict = {}  # the last dev evaluation's
        # Early stopping: evaluations since the best improved by more than min_delta, that best.
        self.evals_without_improvement, self.stopping_best, self.stopped_early = 0, -math.inf, False
        self.dropout_key, self.log, self.is_main = dropout_key, log, jax.process_index() == 0
        self.checkpoints = Checkpoints(workdir, run.keep_checkpoints)
        self.step, self.best_score, self.stage = 0, -math.inf, 0
        self.pending: list = []  # (step, device metrics) not yet fetched
        self.position: Optional[dict] = None  # the loader's position after the last step, mid-epoch
        self.stop: Optional[StopSignals] = None  # set while training: SIGTERM / SIGUSR1 / SIGINT stop the run
        self.window, self.saved_window = LogWindow(), None

    def newest_intact_step(self) -> Optional[int]:
        """The newest checkpoint that reads completely; unreadable ones (a truncated or missing
        file) are set aside with one line each. None: no checkpoint at all."""
        skipped = []
        while (step := self.checkpoints.latest_step()) is not None:
            why = self.checkpoints.unreadable(step)
            if why is None:
                return step
            where = self.checkpoints.set_aside(step)
            skipped.append(step)
            self.log(f"checkpoint at step {step} is unreadable ({why}); set aside in {where}")
        if skipped:
            raise CheckpointError(f"{self.workdir / 'checkpoints'}: no intact checkpoint left (unreadable "
                                  f"steps {skipped} set aside in {self.workdir / 'checkpoints-unreadable'}); "
                                  "start afresh in another --workdir")
        return None

    def undamaged_latest_step(self) -> Optional[int]:
        """The newest checkpoint of a multi-process run, its files checked against their digest
        by every process (the same files, so the same answer): a damaged one is named, and left
        where it is for a person to move (the processes would race to set it aside)."""
        step = self.checkpoints.latest_step()
        folder = self.workdir / "checkpoints" / str(step)
        why = None if step is None else digest_mismatch(folder)
        if why:
            raise CheckpointError(f"the checkpoint at step {step} is damaged: {why}; move {folder} out of "
                                  "checkpoints/ and restart, to resume from the one before")
        return step

    def resume(self) -> None:
        """From the newest intact checkpoint in the workdir, if any; else a fresh state."""
        # Multi-process runs share the files: only a single process sets checkpoints aside.
        latest = self.newest_intact_step() if jax.process_count() == 1 else self.undamaged_latest_step()
        meta = self.checkpoints.meta(self.checkpoints.latest, latest) if latest is not None else {}
        self.stage, self.best_score = meta.get("stage", 0), meta.get("best_score", -math.inf)
        self.saved_window = meta.get("log_window")  # absent from older checkpoints, and at epoch ends
        self.evals_without_improvement = meta.get("evals_without_improvement", 0)
        self.stopping_best = meta.get("stopping_best", self.best_score)
        self.stopped_early = meta.get("stopped_early", False)
        self.optimizer, self.runner = self.stages.build(self.stage)
        state = self.stages.initial_state(self.optimizer)
        if latest is not None:
            try:
                restored = self.checkpoints.restore(self.checkpoints.latest, latest,
                                                    {"train": state.saved(), "loader": self.loader.state_dict()})
            except Exception as e:  # read whole above, so a shape mismatch (another model) or a damaged file
                raise CheckpointError(f"{self.workdir / 'checkpoints'}: the checkpoint at step {latest} does not "
                                      f"restore into this run's state ({first_line(e)})") from None
            state = TrainState.from_saved(restored["train"])
            self.loader.restore({"state": restored["loader"],
                                 "padding": meta.get("padding", {})})  # padding: absent from older checkpoints
            self.step = int(state.step)
            self.log(f"resumed from {self.workdir / 'checkpoints'} at step {self.step} (epoch {self.loader.epoch + 1})")
        self.state = distributed.replicate(state)
        run = self.run
        trackers = make_trackers(self.workdir, self.step, tensorboard=run.tensorboard, wandb=run.wandb,
                                 wandb_project=run.wandb_project, wandb_name=run.wandb_name or self.workdir.name,
                                 enabled=self.is_main, tasks=self.stages.tasks, log=self.log)
        trackers.log_config(dataclasses.asdict(run))
        self.metrics_log = MetricsLog(self.workdir / "metrics.jsonl", self.step, self.is_main, self.started, trackers)
        # One process traces (the trace files are named by host).
        self.profile = ProfileWindow(self.workdir / "profile", run.profile_start_step, run.profile_num_steps,
                                     enabled=self.is_main, log=self.log)
        if latest is not None:  # on every process: its save is collective
            self.repair_best()
        planned = f"{self.stages.planned_steps} steps in {self.run.num_epochs + self.run.frozen_epochs} epochs"
        if self.stages.last_step < self.stages.planned_steps:
            planned = f"{self.stages.last_step} steps (max_steps; {planned})"
        self.log(f"{len(self.stages.tasks)} tasks, {planned}, {jax.device_count()} device(s)")

    def repair_best(self) -> None:
        """best/ as the dev records say it should be: a run that an earlier version of this
        code saved in the other order (latest first) and that was killed between its two saves
        left best/ without its best epoch; it is copied from checkpoints/ when still there."""
        # Up to the step resumed from: what process 0 keeps of the log, whether or not another
        # process reads it before process 0 has cut it (every process must decide alike).
        records = [r for r in self.metrics_log.records() if "dev_overall" in r and r["step"] <= self.step]
        if not records:
            return
        best = max(records, key=lambda r: r["dev_overall"])  # the first of equals, as best/ keeps
        kept = self.checkpoints.best_step()
        kept_score = next((r["dev_overall"] for r in records if r["step"] == kept), -math.inf)
        if kept is not None and kept_score >= best["dev_overall"]:
            return
        if best["step"] not in self.checkpoints.latest.all_steps():
            self.log(f"best/ lacks step {best['step']} (dev overall {best['dev_overall']:.4f}), and "
                     f"checkpoints/ no longer has it: best/ keeps step {kept}")
            return
        self.checkpoints.copy_to_best(best["step"], best["dev_overall"])
        self.log(f"best/ repaired: step {best['step']} (dev overall {best['dev_overall']:.4f}) copied from checkpoints/")

    def train_epoch(self) -> int:
        """The rest of the current epoch, or of the stage when it ends first; returns the epoch.

        The host never waits for a step: batches are prepared in a background thread, and each
        step's metrics stay on the device until the next log line or save fetches them all.
        """
        epoch = self.loader.epoch
        if self.stages.stage_at(epoch, self.step) != self.stage:  # the encoder is frozen from here on
            self.stage = self.stages.stage_at(epoch, self.step)
            self.optimizer, self.runner = self.stages.build(self.stage)
            self.state = distributed.replicate(self.stages.start_stage(
                self.optimizer, distributed.fetch_replica(self.state), self.step))
            self.log(f"epoch {epoch + 1}: encoder frozen from here on")
        stage_end = self.stages.ends[self.stage]
        bar = tqdm(total=self.loader.steps_in_epoch(), initial=self.loader.step, disable=not self.is_main,
                   desc=f"epoch {epoch + 1}/{self.run.num_epochs + self.run.frozen_epochs}", unit="step")
        # Resumed mid-epoch: the losses since the last log record, as saved (examples/s counts
        # only what this process trains).
        self.window, self.pending = LogWindow.from_state(self.saved_window), []
        self.saved_window = None
        # `index` (record positions) only puts evaluation outputs back in file order: not sent.
        prefetcher = Prefetcher(self.loader, lambda batches: {
            t: distributed.to_devices(distributed.process_shard(batch_layout.for_devices(b)))
            for t, b in batches.items()}, measure=self._measure(frozen=self.run.optimizer.freeze_encoder or self.stage == FROZEN_ENCODER))
        try:
            for item in prefetcher:
                if self.stop is not None and (name := self.stop.agreed(self.step)):
                    self.save()  # the steps trained so far, the loader at the last of them
                    raise Preempted(self.step, name)
                self.profile.before_step(self.step + 1)
                with self.profile.annotate(self.step + 1):
                    self.state, metrics = self.runner(self.state, item.batches, self.dropout_key)
                self.step += 1
                self.profile.after_step(self.step, self.state)
                self.position = item.position
                self.pending.append((self.step, metrics))
                if len(self.pending) > MAX_STEPS_IN_FLIGHT:  # the host waits for an older step only:
                    jax.block_until_ready(self.pending[-MAX_STEPS_IN_FLIGHT - 1][1]["loss"])  # devices stay busy
                self.window.add_step(item.examples, item.tokens, item.flops)
                bar.update(1)
                if self.step % self.run.log_every_steps == 0 or self.step == stage_end:
                    record = self.window.record(self.step, epoch + 1, self.check_pending(epoch),
                                                item.padding_efficiency)
                    utilisation = flops.mfu(record["model_tflops"] * 1e12, jax.devices()[0].device_kind,
                                            self.run.compute_dtype, jax.device_count())
                    if utilisation is not None:  # a known accelerator: not a CPU
                        record["mfu"] = utilisation
                    self.metrics_log.write(record)
                    bar.set_postfix({**{t: f"{v:.3f}" for t, v in record["loss"].items()},
                                     "ex/s": f"{record['examples_per_second']:.1f}"})
                after = item.position["state"]  # the loader runs ahead in its thread: this step's position
                ends_epoch = int(after["step"]) == self.loader.steps_in_epoch(epoch) or self.step >= stage_end
                # Not at an epoch's end: its dev record and checkpoint follow (`end_epoch`). A
                # checkpoint there without the record would let a run killed while evaluating
                # restart as finished, with no dev record, best checkpoint or plots.
                every = self.run.eval_every_steps
                if every and self.step % every == 0 and not ends_epoch:
                    self.evaluate(epoch)  # its dev record and checkpoint; may stop the run early
                elif self.step % self.run.checkpoint_every_steps == 0 and not ends_epoch:
                    self.save()
                if self.step >= stage_end:
                    break
            self.check_pending(epoch)
        finally:
            prefetcher.close()  # an unfinished epoch: the loader goes back to the last step trained
            self.position = None
            bar.close()
        if self.step >= stage_end and stage_end != self.stages.last_step:
            self.loader.end_epoch_early()  # max_steps ended the stage mid-epoch
        return epoch

    def check_pending(self, epoch: int) -> Optional[dict]:
        """Fetches the metrics of the steps since the last check (one transfer), stops the run at
        the first non-finite loss, adds the losses to the log window; returns the last step's."""
        if not self.pending:
            return None
        fetched = distributed.fetch_replica([metrics for _, metrics in self.pending])
        steps, self.pending = [step for step, _ in self.pending], []
        for step, metrics in zip(steps, fetched):
            losses = {t: float(v) for t, v in metrics["loss"].items()}
            for task, value in losses.items():
                if not math.isfinite(value):
                    raise TrainingError(f"the {task} loss is {value} at step {step} (epoch {epoch + 1}); "
                                        "stopping without saving (try a lower learning rate)")
            self.window.add_losses(losses)
        return fetched[-1]

    def evaluate(self, epoch: int, epoch_end: bool = False) -> None:
        """A dev evaluation (at an epoch's end, or every eval_every_steps), its record, and a
        checkpoint saved after it (best/ too when it is a new best): a run killed between the
        two evaluates again on restart. Raises EarlyStopped once early_stopping_patience
        evaluations in a row have not improved on the best by more than the minimum delta.

        The record's `final` says whether the run ends with it (its last epoch or max_steps
        reached, or stopped early: then `stopped_early` too), so that a reader of the log
        (compare.py) tells a finished run from one in its last epoch."""
        started = time.perf_counter()
        results = self.dev_metrics(self.state.evaluated)  # not the optimizer's moments
        # With a weight average, the trained parameters' own score too: the average's gain,
        # measured in the same run (the average does not change training).
        unaveraged = None if self.state.average is None else self.dev_metrics(self.state.params)
        score = overall_score(results)
        improved = score > self.best_score  # ties keep the earlier evaluation
        self.best_score = max(self.best_score, score)
        if score > self.stopping_best + self.run.early_stopping_min_delta:
            self.stopping_best, self.evals_without_improvement = score, 0
        else:
            self.evals_without_improvement += 1
        patience = self.run.early_stopping_patience
        self.stopped_early = bool(patience) and self.evals_without_improvement >= patience
        last = epoch_end and (epoch + 1 >= self.run.num_epochs + self.run.frozen_epochs
                              or self.step >= self.stages.last_step)
        record = {"step": self.step, "epoch": epoch + 1, "dev": results, "dev_overall": score,
                  "final": last or self.stopped_early}
        if self.stopped_early:
            record["stopped_early"] = True
        if unaveraged is not None:
            record |= {"dev_unaveraged": unaveraged, "dev_unaveraged_overall": overall_score(unaveraged)}
        self.metrics_log.write(record)
        self.results = results
        describe = lambda r: ", ".join(f"{t} {next(iter(m.values())):.4f}" for t, m in r.items())  # noqa: E731
        where = f"epoch {epoch + 1}" + ("" if self.position is None else f", step {self.step}")
        self.log(f"{where}: dev {describe(results)}; overall {score:.4f}")
        if unaveraged is not None:
            self.log(f"{where}: dev without the weight average {describe(unaveraged)}; "
                     f"overall {record['dev_unaveraged_overall']:.4f}")
        self.window.pause(time.perf_counter() - started)  # mid-epoch: not the steps' time
        self.save(score if improved else None)  # best/ is written only for a new best
        if self.stopped_early:
            raise EarlyStopped(f"early stopping: {patience} dev evaluation(s) without improving on "
                               f"{self.stopping_best:.4f} by more than {self.run.early_stopping_min_delta}; "
                               f"stopped after step {self.step}, saved")

    def save(self, score: Optional[float] = None) -> None:
        """A checkpoint of the state and the loader's position after the last step trained; the
        steps not yet checked are checked first, so that nothing non-finite is saved."""
        position = self.position or self.loader.position()  # mid-epoch: the prefetcher's snapshot
        self.check_pending(int(position["state"]["epoch"]))
        meta = {"stage": self.stage, "best_score": self.best_score, "epoch": int(position["state"]["epoch"]),
                "step": self.step, "padding": position["padding"], "config": dataclasses.asdict(self.run),
                # Mid-epoch, what the next log record averages over so far: a run resumed from
                # here writes the record an uninterrupted run writes. (At an epoch's end the
                # next epoch starts a new window anyway.)
                "log_window": self.window.state() if self.position is not None else None,
                "evals_without_improvement": self.evals_without_improvement, "stopping_best": self.stopping_best,
                "stopped_early": self.stopped_early}
        started = time.perf_counter()
        state = {"train": distributed.fetch_replica(self.state).saved(), "loader": position["state"]}
        self.checkpoints.save(self.step, state, meta, score)
        self.window.pause(time.perf_counter() - started)  # not a step's time

    def _measure(self, frozen: bool):
        """(real tokens, model FLOPs) of a step's host batches, counted in the prefetch thread: a
        step's forwards and backwards (3 forwards; 1 with the encoder frozen)."""
        if self.encoder_shape is None:
            return None
        passes = 1.0 if frozen else flops.FORWARD_AND_BACKWARD

        def measure(batches) -> tuple[float, float]:
            tokens = sum(flops.batch_tokens(b)[0] for b in batches.values())
            return float(tokens), flops.step_flops(self.encoder_shape, batches, passes)
        return measure

    def close(self) -> None:
        self.profile.close()
        self.checkpoints.close()
        self.metrics_log.close()

    def summary(self) -> str:
        """The run's last line: where its best parameters are, how long it took, what to run next."""
        seconds = self.metrics_log.run_seconds()
        hours, rest = divmod(int(seconds), 3600)
        best = self.checkpoints.best_step()
        kept = "no dev evaluation yet" if best is None else f"best/ holds step {best} (dev overall {self.best_score:.4f})"
        return (f"done: {kept}; {hours}h{rest // 60:02d}m{rest % 60:02d}s in all; next: python evaluate.py "
                f"--workdir {self.workdir}")
