"""Prediction files are byte for byte what the CS224N starter code writes."""

from __future__ import annotations

import io

import numpy as np
import torch

from mtbert_jax.evaluation import prediction_file
from mtbert_jax.tasks import TASKS


def starter_file(header: str, ids, values) -> str:
    """The starter's evaluation.py: f-strings over its numpy arrays."""
    f = io.StringIO()
    f.write(f"id \t {header} \n")
    for p, s in zip(ids, values):
        f.write(f"{p} , {s} \n")
    return f.getvalue()


def ours(task: str, ids, outputs) -> str:
    f = io.StringIO()
    prediction_file.write_header(f, task)
    prediction_file.write_records(f, task, ids, TASKS[task].kind.labels(outputs))
    return f.getvalue()


def test_files_match_the_starter_code():
    rng = np.random.default_rng(0)
    raw_ids = [" 0A1B2c ", "ff00ee\t", "abc", "X9"]
    starter_ids = [i.lower().strip() for i in raw_ids]  # the starter's record['id'].lower().strip()
    n = len(raw_ids)

    logits = rng.normal(size=(n, 5)).astype(np.float32)
    expected = starter_file("Predicted_Sentiment", starter_ids, np.argmax(logits, axis=1).flatten())
    assert ours("sst", raw_ids, logits) == expected

    logits = np.array([2.3, -0.7, 0.01, -4.0], np.float32)
    y_hat = torch.from_numpy(logits).sigmoid().round().flatten().cpu().numpy()
    expected = starter_file("Predicted_Is_Paraphrase", starter_ids, y_hat)
    assert ours("quora", raw_ids, logits) == expected
    assert " , 1.0 \n" in expected and " , 0.0 \n" in expected

    scores = np.array([3.1234567, 0.1, 4.999999, 2.0], np.float32)
    expected = starter_file("Predicted_Similiary", starter_ids, torch.from_numpy(scores).flatten().numpy())
    assert ours("sts", raw_ids, scores) == expected
    assert expected.splitlines()[0] == "id \t Predicted_Similiary "
    assert "3.1234567" in expected  # full float32 precision, not 4 decimals
