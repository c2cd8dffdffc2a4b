"""Evaluation of a trained run from its checkpoint: metrics, predictions, reports, plots.

Several runs of the same tasks evaluate as an ensemble: each task's outputs are the (weighted)
mean of the members' probabilities or scores (`TaskKind.average`), and everything else is as
for one run.

Files are read, tokenized and predicted in chunks, so memory does not grow with the file
beyond the predictions themselves.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from mtbert_jax.checkpoints.tokenizer import BertTextTokenizer
from mtbert_jax.data.task_files import TaskRecords, iter_task_file
from mtbert_jax.data.tokenized import TaskData, records_data
from mtbert_jax.errors import ConfigError, DataError
from mtbert_jax.evaluation import prediction_file
from mtbert_jax.evaluation.metrics import classification_report, overall_score
from mtbert_jax.evaluation.plots import plot_confusion_matrix, plot_scatter
from mtbert_jax.evaluation.predict import predict
from mtbert_jax.run import atomic
from mtbert_jax.run.config import RunConfig
from mtbert_jax.run.trained import TrainedModel, load_trained
from mtbert_jax.tasks import TASKS

Models = Union[TrainedModel, Sequence[TrainedModel]]


def as_members(models: Models) -> list[TrainedModel]:
    return [models] if isinstance(models, TrainedModel) else list(models)


def reading(tokenizer: BertTextTokenizer, run: RunConfig, task: str) -> tuple:
    """What decides a run's tokens for `task`: vocabulary and pair layout, length, pair encoding."""
    return tokenizer.fingerprint, run.max_length, run.model.pair_encoding(task)


def tokenized(trained: TrainedModel, records: TaskRecords, shared: Optional[dict] = None) -> TaskData:
    """`records` tokenized as `trained` reads them (its tokenizer, max_length, pair encoding);
    `shared` ({reading: TaskData}) keeps one tokenization for members that read alike (an
    ensemble of seeds, teachers of one recipe)."""
    key = reading(trained.tokenizer, trained.run, records.task)
    if shared is not None and key in shared:
        return shared[key]
    data = records_data(records, "eval", trained.tokenizer, trained.run.max_length, key[2])
    if shared is not None:
        shared[key] = data
    return data


def predict_records(trained: TrainedModel, records: TaskRecords, batch_size: int,
                    symmetric_pairs: Optional[bool] = None, shared: Optional[dict] = None,
                    progress: str = "") -> np.ndarray:
    """Head outputs for `records` in their order; pairs in both orders as the run does
    (`symmetric_pairs` None) or as said. `progress`: a progress bar so described (none: empty)."""
    symmetric = trained.run.model.symmetric_pairs if symmetric_pairs is None else symmetric_pairs
    return predict(trained.predict_fn, trained.params, tokenized(trained, records, shared), batch_size,
                   trained.layout, symmetric, progress=progress)


def text_records(task: str, items: Sequence[tuple[str, ...]]) -> TaskRecords:
    """Sentences ((s,)) or pairs ((a, b)) given by a person, as a task's unlabelled records."""
    texts = [list(column) for column in zip(*items)]
    return TaskRecords(task, Path("<input>"), [str(i) for i in range(len(items))], texts, None, [])


def predict_file(models: Models, task: str, path: Path, batch_size: int,
                 chunk_size: int = 10_000, out_file: Optional[Path] = None,
                 weights: Optional[Sequence[float]] = None):
    """Streams a task file: (head outputs, gold labels or None), writing the CS224N
    prediction file (ids with predictions, in input order) as it goes, to `out_file` (the
    caller renames it into place once every output is complete). Several models: their
    outputs averaged (`weights`, default equal), each model reading the records as it was
    trained to (its max_length and pair encoding)."""
    members = as_members(models)
    kind = TASKS[task].kind
    outputs, gold, cut, id_hashes = [], [], 0, []
    handle = open(out_file, "w") if out_file else None
    try:
        if handle:
            prediction_file.write_header(handle, task)
        for chunk in iter_task_file(path, task, lenient=False, chunk_size=chunk_size):
            shared: dict = {}
            out = kind.average([predict_records(m, chunk, batch_size, shared=shared, progress=f"{task}: {path.name}"
                                                + (f", run {i + 1} of {len(members)}" if len(members) > 1 else ""))
                                for i, m in enumerate(members)], weights)
            cut += tokenized(members[0], chunk, shared).num_truncated  # said for the first member's max_length
            # 8 bytes a record: memory stays within the outputs' own growth.
            id_hashes.append(np.fromiter((hash(i) for i in chunk.record_ids), np.int64, len(chunk.record_ids)))
            if handle:
                prediction_file.write_records(handle, task, chunk.record_ids, kind.labels(out))
            outputs.append(out)
            if chunk.labels is not None:
                gold.append(chunk.labels)
    finally:
        if handle:
            handle.close()
    if not sum(len(o) for o in outputs):
        raise DataError(f"{path}: no {task} records after the header")
    max_length = members[0].run.max_length
    # Not errors, but what a careful user wants to know: said in one line each.
    if cut:
        print(f"{path}: {cut} record(s) longer than max_length={max_length} tokens, scored on their "
              "first max_length tokens as in training")
    hashes = np.concatenate(id_hashes)
    repeated = len(hashes) - len(np.unique(hashes))
    if repeated:
        print(f"{path}: {repeated} record(s) repeat an earlier id; every record is scored and written, in file order")
    outputs = np.concatenate(outputs)
    return outputs, (np.concatenate(gold) if gold else None)


def dev_outputs(trained: TrainedModel, batch_size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{task: (head outputs, gold labels)} on the run's dev files."""
    from mtbert_jax.data.task_files import resolve_data_dir

    data_dir = resolve_data_dir(trained.run.data_dir or None)
    return {task: predict_file(trained, task, data_dir / TASKS[task].file_name("dev"), batch_size)
            for task in trained.run.model.tasks}


def score_outputs(outputs: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[dict, float]:
    """Each task's metrics of (outputs, gold) and the overall score."""
    results = {}
    for task, (out, gold) in outputs.items():
        kind = TASKS[task].kind
        results[task] = kind.metrics(kind.labels(out), gold)
    return results, overall_score(results)


EVALUATED_SPLITS = ("dev", "test")


def check_task_files(task_files: dict[str, dict[str, Path]], splits: Sequence[str],
                     tasks: Optional[Sequence[str]] = None) -> None:
    """Refuses a --task-file that would not be used: an unknown split or task, a split this
    evaluation does not run, a task the model lacks (`tasks`), a file that does not exist."""
    for split, files in task_files.items():
        for task, path in files.items():
            spec = f"--task-file {split}:{task}={path}"
            if split not in EVALUATED_SPLITS:
                raise ConfigError(f"{spec}: unknown split {split!r}, expected one of {EVALUATED_SPLITS}")
            if split not in splits:
                raise ConfigError(f"{spec}: this evaluation runs --split {'/'.join(splits)}, not {split}")
            if task not in TASKS:
                raise ConfigError(f"{spec}: unknown task {task!r}, expected one of {sorted(TASKS)}")
            if tasks is not None and task not in tasks:
                raise ConfigError(f"{spec}: the model has no {task} head (it trains {', '.join(tasks)})")
            if not Path(path).is_file():
                raise ConfigError(f"{spec}: no such file")


def parse_weights(text: str, count: int) -> list[float]:
    """--weights W1,W2,...: `count` finite non-negative numbers, not all zero, with a finite sum."""
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise ConfigError(f"--weights {text!r}: expected numbers separated by commas, e.g. 0.5,0.3,0.2") from None
    check_weights(weights, count)
    return weights


def check_weights(weights: Sequence[float], count: int) -> None:
    if len(weights) != count or not all(math.isfinite(w) and w >= 0 for w in weights) \
            or not 0 < sum(weights) < math.inf:
        raise ConfigError(f"--weights {','.join(map(str, weights))}: expected {count} finite non-negative "
                          "numbers, one per --workdir, not all zero")


def load_members(workdirs: Sequence[str | Path], which: str = "best", symmetric_pairs: Optional[bool] = None,
                 weights: Optional[Sequence[float]] = None) -> list[TrainedModel]:
    """The runs to evaluate together; refuses, in one line, runs of different tasks and weights
    that do not fit."""
    if weights is not None:
        check_weights(weights, len(workdirs))
    if len({Path(w).resolve() for w in workdirs}) < len(workdirs):
        raise ConfigError("--workdir: a run given twice (use --weights to weigh a run more)")
    members = [load_trained(w, which, symmetric_pairs) for w in workdirs]
    for workdir, trained in zip(workdirs[1:], members[1:]):
        if list(trained.run.model.tasks) != list(members[0].run.model.tasks):
            raise ConfigError(f"--workdir {workdir}: trains {', '.join(trained.run.model.tasks)}, but "
                              f"{workdirs[0]} trains {', '.join(members[0].run.model.tasks)}; an ensemble needs "
                              "runs of the same tasks")
    return members


def evaluate_run(workdir: str | Path | Sequence[str | Path], which: str = "best", splits: Sequence[str] = ("dev",),
                 task_files: Optional[dict[str, dict[str, Path]]] = None, out_dir: Optional[Path] = None,
                 batch_size: int = 128, chunk_size: int = 10_000, symmetric_pairs: Optional[bool] = None,
                 weights: Optional[Sequence[float]] = None) -> dict:
    """Evaluates every task of a run, or of an ensemble of runs (several workdirs, each task's
    outputs averaged with `weights`), on the given splits; writes metrics.json, predictions,
    reports and plots under `out_dir` (one run: default WORKDIR/eval; an ensemble needs one).
    Returns the metrics. `symmetric_pairs`: score pairs in both orders (True), as given
    (False), or as each run did (None)."""
    from mtbert_jax.evaluation.plots import plot_training_curves

    workdirs = [Path(workdir)] if isinstance(workdir, (str, Path)) else [Path(w) for w in workdir]
    task_files = task_files or {}
    if len(workdirs) > 1 and out_dir is None:
        raise ConfigError("an ensemble (several --workdir) writes its outputs to --out DIR: give one")
    check_task_files(task_files, splits)
    out_dir = Path(out_dir) if out_dir else workdirs[0] / "eval"
    if out_dir.resolve() != (workdirs[0] / "eval").resolve():  # a run's own eval/ is its to rewrite
        # One run may write inside its own workdir (as eval/ is); an ensemble's --out stays apart.
        atomic.check_output_directory(out_dir, workdirs if len(workdirs) > 1 else [],
                                      _same_evaluation(out_dir, workdirs))
    members = load_members(workdirs, which, symmetric_pairs, weights)
    check_task_files(task_files, splits, members[0].run.model.tasks)
    # Everything is written in a staging directory beside out_dir and moved in when all is done:
    # a refused or interrupted evaluation leaves out_dir as it was (or absent).
    with atomic.staged_directory(out_dir) as staging:
        (staging / "predictions").mkdir()
        (staging / "plots").mkdir()
        results = _evaluate_splits(members, workdirs, which, splits, task_files, staging, batch_size, chunk_size,
                                   weights)
        atomic.write_text(staging / "metrics.json", json.dumps(results, indent=2) + "\n")
        if len(workdirs) == 1 and (workdirs[0] / "metrics.jsonl").exists():
            plot_training_curves(workdirs[0] / "metrics.jsonl", staging / "plots")
        # eval/ also keeps compare.py's cached dev outputs: only these two are evaluate's own.
        atomic.move_into(staging, out_dir, own=("predictions", "plots"))
    return results


def _same_evaluation(out_dir: Path, workdirs: list[Path]) -> bool:
    """Whether out_dir holds an earlier evaluation of these same runs (which a new one replaces)."""
    try:
        earlier = json.loads((out_dir / "metrics.json").read_text())["workdir"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    earlier = [earlier] if isinstance(earlier, str) else earlier
    return isinstance(earlier, list) and sorted(str(Path(w).resolve()) for w in earlier) == \
        sorted(str(w.resolve()) for w in workdirs)


def _evaluate_splits(members: list[TrainedModel], workdirs: list[Path], which: str, splits: Sequence[str],
                     task_files: dict, out_dir: Path, batch_size: int, chunk_size: int,
                     weights: Optional[Sequence[float]]) -> dict:
    """Every task on every split: the results; predictions and plots written into `out_dir`."""
    first = members[0]
    results: dict = {"workdir": str(workdirs[0]), "checkpoint": which, "step": first.step,
                     "symmetric_pairs": first.run.model.symmetric_pairs}
    if len(members) > 1:
        results |= {"workdir": [str(w) for w in workdirs], "step": [m.step for m in members],
                    "symmetric_pairs": [m.run.model.symmetric_pairs for m in members],
                    "weights": list(weights) if weights is not None else [1 / len(members)] * len(members)}
    planned = _planned_files(first, splits, task_files)
    for split in splits:
        split_results = {}
        for task, path in planned[split].items():
            out_file = out_dir / "predictions" / f"{prediction_file.FILE_PREFIXES[task]}-{split}-output.csv"
            outputs, gold = predict_file(members, task, Path(path), batch_size, chunk_size, out_file, weights)
            if gold is None:
                continue  # unlabelled (test) files: predictions only
            spec = TASKS[task]
            predicted = spec.kind.labels(outputs)
            metrics = spec.kind.metrics(predicted, gold)
            if spec.is_classification:
                metrics |= classification_report(predicted, gold, spec.num_classes)
                plot_confusion_matrix(metrics["confusion_matrix"], f"{task} {split}",
                                      out_dir / "plots" / f"confusion-{task}-{split}.png")
            else:
                plot_scatter(predicted, gold, f"{task} {split}: r = {metrics['pearson']:.3f}",
                             out_dir / "plots" / f"scatter-{task}-{split}.png")
            split_results[task] = metrics
        if split_results and set(split_results) == set(first.run.model.tasks):  # every task or none
            split_results["overall"] = overall_score(
                {t: {k: v for k, v in m.items() if k in ("accuracy", "pearson")} for t, m in split_results.items()})
        results[split] = split_results
    return results


def _planned_files(first: TrainedModel, splits: Sequence[str], task_files: dict) -> dict[str, dict[str, Path]]:
    """{split: {task: file}} to evaluate, every file found and its header checked before any
    model runs: a dev file that cannot be scored is refused at once, not after minutes of
    predicting the tasks before it."""
    from mtbert_jax.data.task_files import is_labelled, resolve_data_dir

    data_dir = None
    planned: dict[str, dict[str, Path]] = {}
    for split in splits:
        planned[split] = {}
        for task in first.run.model.tasks:
            path = task_files.get(split, {}).get(task)
            if path is None:
                data_dir = data_dir or resolve_data_dir(first.run.data_dir or None)
                path = data_dir / TASKS[task].file_name(split)
                if not path.exists() and split == "dev":  # the run's score needs every task's
                    raise DataError(f"{path}: no such file, needed for the {task} dev metrics (give one with "
                                    f"--task-file dev:{task}=PATH)")
                if not path.exists():
                    print(f"{task} {split}: no file {path}; no {task} {split} predictions")
                    continue
            labelled = is_labelled(path, task)  # every file's header read now, test files' too
            # A dev file is there to be scored: never dropped silently from the overall score.
            if split == "dev" and not labelled:
                raise DataError(f"{path}: no {TASKS[task].label_column!r} column, which a dev file needs "
                                "for its metrics (unlabelled files: --split test, predictions only)")
            planned[split][task] = Path(path)
    return planned


def format_table(results: dict) -> str:
    lines = [f"{'split':<6} {'task':<8} {'metric':<9} {'value':>7}"]
    for split in ("dev", "test"):
        for task, metrics in results.get(split, {}).items():
            if task == "overall":
                lines.append(f"{split:<6} {'overall':<8} {'score':<9} {metrics:>7.4f}")
                continue
            for name in ("accuracy", "macro_f1", "pearson", "spearman"):
                if name in metrics:
                    lines.append(f"{split:<6} {task:<8} {name:<9} {metrics[name]:>7.4f}")
    return "\n".join(lines)


def score_texts(models: Models, sentences: Sequence[str] = (), pairs: Sequence[tuple[str, str]] = (),
                weights: Optional[Sequence[float]] = None) -> list[dict]:
    """Each task's output for sentences (sentiment tasks) and pairs (pair tasks), for people;
    several models: their outputs averaged, as in `predict_file`."""
    members = as_members(models)
    results = []
    for task in members[0].run.model.tasks:
        spec = TASKS[task]
        items = list(pairs) if spec.is_pair else [(s,) for s in sentences]
        if not items:
            continue
        records, shared = text_records(task, items), {}
        outputs = spec.kind.average([predict_records(m, records, 32, shared=shared) for m in members], weights)
        for item, out in zip(items, outputs):
            results.append({"task": task, "input": list(item), **spec.kind.describe(out)})
    return results
