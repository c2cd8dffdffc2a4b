"""Predictions in file order, the task metrics and the overall score."""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from scipy import stats

from mtbert_jax.batching import TaskBatcher
from mtbert_jax.multitask_model import MultiTaskModel
from mtbert_jax.task_files import TASKS
from mtbert_jax.tokenized_data import TaskData


def make_predict(model: MultiTaskModel):
    """jitted (params, task, batch) -> head output, compiled per task and batch shape."""
    return jax.jit(lambda params, task, batch: model.apply({"params": params}, task, batch).prediction,
                   static_argnums=1)


def predict(predict_fn, params, data: TaskData, batch_size: int, buckets: tuple[int, ...]) -> np.ndarray:
    """Head outputs for every record of `data`, in file order (memory: one batch at a time plus
    the outputs). Records are batched by length, so batches carry little padding."""
    batcher = TaskBatcher(data, batch_size, buckets)
    outputs = None
    for batch in batcher.by_length():
        inputs = {k: v for k, v in batch.items() if k.startswith(("input_ids", "token_type_ids", "attention_mask"))}
        real = batch["weights"] > 0
        out = np.asarray(predict_fn(params, data.task, inputs))[real]
        if outputs is None:
            outputs = np.zeros((len(data),) + out.shape[1:], out.dtype)
        outputs[batch["index"][real]] = out
    return outputs if outputs is not None else np.zeros((0,), np.float32)


def labels_from_outputs(task: str, outputs: np.ndarray) -> np.ndarray:
    """Sentiment: argmax class; Quora: 1 when the logit > 0; STS: the score."""
    spec = TASKS[task]
    if spec.num_classes is not None and not spec.is_pair:
        return outputs.argmax(-1)
    if spec.num_classes is not None:
        return (outputs > 0).astype(np.int32)
    return outputs


def task_metrics(task: str, predicted: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Accuracy for the classification tasks; Pearson (and Spearman) r for STS."""
    if TASKS[task].num_classes is not None:
        return {"accuracy": float(np.mean(predicted == gold))}
    return {"pearson": float(stats.pearsonr(predicted, gold).statistic),
            "spearman": float(stats.spearmanr(predicted, gold).statistic)}


def overall_score(metrics: Mapping[str, Mapping[str, float]]) -> float:
    """(SST acc + Quora acc + (STS r + 1) / 2) / 3, averaged over the tasks present (CFIMDB's
    accuracy counts like SST's)."""
    terms = [(m["pearson"] + 1) / 2 if "pearson" in m else m["accuracy"] for m in metrics.values()]
    return float(np.mean(terms))
