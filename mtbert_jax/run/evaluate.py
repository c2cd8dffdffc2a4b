"""Evaluation of a trained run from its checkpoint: metrics, predictions, reports, plots.

Files are read, tokenized and predicted in chunks, so memory does not grow with the file
beyond the predictions themselves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mtbert_jax.data.task_files import iter_task_file
from mtbert_jax.data.tokenized import TaskData, tokenize_records
from mtbert_jax.errors import ConfigError, DataError
from mtbert_jax.evaluation import prediction_file
from mtbert_jax.evaluation.metrics import classification_report, overall_score
from mtbert_jax.evaluation.plots import plot_confusion_matrix, plot_scatter
from mtbert_jax.evaluation.predict import predict
from mtbert_jax.run import atomic
from mtbert_jax.run.trained import TrainedModel, load_trained
from mtbert_jax.tasks import TASKS


def predict_file(trained: TrainedModel, task: str, path: Path, batch_size: int,
                 chunk_size: int = 10_000, out_file: Optional[Path] = None):
    """Streams a task file: (head outputs, gold labels or None), writing the CS224N
    prediction file (ids with predictions, in input order) as it goes, to `out_file` (the
    caller renames it into place once every output is complete)."""
    encoding = trained.run.model.pair_encoding(task)
    outputs, gold, cut, id_hashes = [], [], 0, []
    handle = open(out_file, "w") if out_file else None
    try:
        if handle:
            prediction_file.write_header(handle, task)
        for chunk in iter_task_file(path, task, lenient=False, chunk_size=chunk_size):
            segments, truncated = tokenize_records(chunk, trained.tokenizer, trained.run.max_length, encoding)
            cut += truncated
            # 8 bytes a record: memory stays within the outputs' own growth.
            id_hashes.append(np.fromiter((hash(i) for i in chunk.record_ids), np.int64, len(chunk.record_ids)))
            data = TaskData(task, "eval", np.asarray(chunk.record_ids), chunk.labels, segments, truncated, [])
            out = predict(trained.predict_fn, trained.params, data, batch_size, trained.layout,
                          trained.run.model.symmetric_pairs)
            labels = TASKS[task].kind.labels(out)
            if handle:
                prediction_file.write_records(handle, task, chunk.record_ids, labels)
            outputs.append(out)
            if chunk.labels is not None:
                gold.append(chunk.labels)
    finally:
        if handle:
            handle.close()
    if not sum(len(o) for o in outputs):
        raise DataError(f"{path}: no {task} records after the header")
    # Not errors, but what a careful user wants to know: said in one line each.
    if cut:
        print(f"{path}: {cut} record(s) longer than max_length={trained.run.max_length} tokens, scored on their "
              "first max_length tokens as in training")
    hashes = np.concatenate(id_hashes)
    repeated = len(hashes) - len(np.unique(hashes))
    if repeated:
        print(f"{path}: {repeated} record(s) repeat an earlier id; every record is scored and written, in file order")
    outputs = np.concatenate(outputs)
    return outputs, (np.concatenate(gold) if gold else None)


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


def evaluate_run(workdir: str | Path, which: str = "best", splits: Sequence[str] = ("dev",),
                 task_files: Optional[dict[str, dict[str, Path]]] = None, out_dir: Optional[Path] = None,
                 batch_size: int = 128, chunk_size: int = 10_000, symmetric_pairs: Optional[bool] = None) -> dict:
    """Evaluates every task of a run on the given splits; writes metrics.json, predictions,
    reports and plots under `out_dir` (default WORKDIR/eval). Returns the metrics.
    `symmetric_pairs`: score pairs in both orders (True), as given (False), or as the run did (None)."""
    from mtbert_jax.evaluation.plots import plot_training_curves

    workdir, task_files = Path(workdir), task_files or {}
    check_task_files(task_files, splits)
    trained = load_trained(workdir, which, symmetric_pairs)
    check_task_files(task_files, splits, trained.run.model.tasks)
    out_dir = Path(out_dir) if out_dir else workdir / "eval"
    (out_dir / "predictions").mkdir(parents=True, exist_ok=True)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []  # (written, its final name): renamed when all are done
    try:
        results = _evaluate_splits(trained, workdir, which, splits, task_files, out_dir, batch_size, chunk_size,
                                   staged)
        for written, final in staged:
            os.replace(written, final)
        atomic.write_text(out_dir / "metrics.json", json.dumps(results, indent=2) + "\n")
    finally:
        for written, _ in staged:
            written.unlink(missing_ok=True)
    if (workdir / "metrics.jsonl").exists():
        plot_training_curves(workdir / "metrics.jsonl", out_dir / "plots")
    return results


def _evaluate_splits(trained: TrainedModel, workdir: Path, which: str, splits: Sequence[str],
                     task_files: dict, out_dir: Path, batch_size: int, chunk_size: int,
                     staged: list[tuple[Path, Path]]) -> dict:
    """Every task on every split: the results, with each prediction file written under a
    temporary name (added to `staged`)."""
    from mtbert_jax.data.task_files import resolve_data_dir

    data_dir = None
    results: dict = {"workdir": str(workdir), "checkpoint": which, "step": trained.step,
                     "symmetric_pairs": trained.run.model.symmetric_pairs}
    for split in splits:
        split_results = {}
        for task in trained.run.model.tasks:
            path = task_files.get(split, {}).get(task)
            if path is None:
                data_dir = data_dir or resolve_data_dir(trained.run.data_dir or None)
                path = data_dir / TASKS[task].file_name(split)
                if not path.exists() and split == "dev":  # the run's score needs every task's
                    raise DataError(f"{path}: no such file, needed for the {task} dev metrics (give one with "
                                    f"--task-file dev:{task}=PATH)")
                if not path.exists():
                    print(f"{task} {split}: no file {path}; no {task} {split} predictions")
                    continue
            out_file = out_dir / "predictions" / f"{prediction_file.FILE_PREFIXES[task]}-{split}-output.csv"
            written = out_file.with_name(f".{out_file.name}.partial")
            staged.append((written, out_file))
            outputs, gold = predict_file(trained, task, Path(path), batch_size, chunk_size, written)
            if gold is None:
                if split == "dev":  # a dev file is there to be scored: never drop it silently
                    raise DataError(f"{path}: no {TASKS[task].label_column!r} column, which a dev file needs "
                                    "for its metrics (unlabelled files: --split test, predictions only)")
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
        if split_results and set(split_results) == set(trained.run.model.tasks):  # every task or none
            split_results["overall"] = overall_score(
                {t: {k: v for k, v in m.items() if k in ("accuracy", "pearson")} for t, m in split_results.items()})
        results[split] = split_results
    return results


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


def score_texts(trained: TrainedModel, sentences: Sequence[str] = (), pairs: Sequence[tuple[str, str]] = ()) -> list[dict]:
    """Each task's output for sentences (sentiment tasks) and pairs (pair tasks), for people."""
    from mtbert_jax.data.task_files import TaskRecords

    results = []
    for task in trained.run.model.tasks:
        spec = TASKS[task]
        items = list(pairs) if spec.is_pair else [(s,) for s in sentences]
        if not items:
            continue
        texts = [list(column) for column in zip(*items)]
        records = TaskRecords(task, Path("<input>"), [str(i) for i in range(len(items))], texts, None, [])
        segments, _ = tokenize_records(records, trained.tokenizer, trained.run.max_length,
                                       trained.run.model.pair_encoding(task))
        data = TaskData(task, "input", np.asarray(records.record_ids), None, segments, 0, [])
        outputs = predict(trained.predict_fn, trained.params, data, 32, trained.layout,
                          trained.run.model.symmetric_pairs)
        for item, out in zip(items, outputs):
            results.append({"task": task, "input": list(item), **spec.kind.describe(out)})
    return results
