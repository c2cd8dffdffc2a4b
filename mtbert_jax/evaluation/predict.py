"""Predictions in file order: head outputs, the labels they stand for, and the metrics of
whole datasets."""

from __future__ import annotations

from typing import Mapping, Sequence, Union

import jax
import numpy as np
from tqdm import tqdm

from mtbert_jax.batch import INDEX, WEIGHTS, model_inputs
from mtbert_jax.data.packing import BatchLayout, as_layout
from mtbert_jax.data.tokenized import TaskData
from mtbert_jax.model.multitask import MultiTaskModel
from mtbert_jax.tasks import TASKS


def make_predict(model: MultiTaskModel):
    """jitted (params, task, batch) -> head output, compiled per task and batch shape."""
    return jax.jit(lambda params, task, batch: model.apply({"params": params}, task, batch).prediction,
                   static_argnums=1)


Layout = Union[BatchLayout, Sequence[int]]


def predict(predict_fn, params, data: TaskData, batch_size: int, layout: Layout,
            symmetric_pairs: bool = False, progress: str = "") -> np.ndarray:
    """Head outputs for every record of `data`, in file order (memory: one batch at a time plus
    the outputs). Records are batched by length, so batches carry little padding, or packed
    (`layout`: bucket lengths or a BatchLayout).

    `symmetric_pairs`: a pair task's output is the mean of its outputs for the two sentence
    orders (Quora's logit, STS's score), so that swapping a pair never changes its prediction.
    `progress`: a progress bar of the records scored, so described (none when empty); it is
    cleared when done, so that a log keeps only its results."""
    if symmetric_pairs and TASKS[data.task].is_pair:
        forward = predict(predict_fn, params, data, batch_size, layout, progress=progress)
        backward = predict(predict_fn, params, data.swapped(), batch_size, layout,
                           progress=progress and f"{progress}, pairs swapped")
        return ((forward.astype(np.float32) + backward.astype(np.float32)) / 2).astype(forward.dtype)
    batcher = as_layout(layout).batcher(data, batch_size)
    outputs = None
    with tqdm(total=len(data), desc=progress, unit="record", leave=False, disable=not progress) as bar:
        for batch in batcher.by_length():
            inputs = model_inputs(batch)
            real = batch[WEIGHTS] > 0
            out = np.asarray(predict_fn(params, data.task, inputs))[real]
            if outputs is None:
                outputs = np.zeros((len(data),) + out.shape[1:], out.dtype)
            outputs[batch[INDEX][real]] = out
            bar.update(int(real.sum()))
    return outputs if outputs is not None else np.zeros((0,), np.float32)


def dataset_metrics(predict_fn, params, datasets: Mapping[str, TaskData], batch_size: int,
                    layout: Layout, symmetric_pairs: bool = False,
                    progress: str = "") -> dict[str, dict[str, float]]:
    """{task: its metrics} over whole labelled datasets (the dev record after each epoch);
    `progress`: a bar per task, described by this and the task (none when empty)."""
    results = {}
    for task, data in datasets.items():
        outputs = predict(predict_fn, params, data, batch_size, layout, symmetric_pairs,
                          progress=progress and f"{progress} {task}")
        kind = TASKS[task].kind
        results[task] = kind.metrics(kind.labels(outputs), data.labels)
    return results
