"""The CS224N starter code's prediction files, byte for byte: students submit them.

The starter writes `f"id \\t {header} \\n"`, then `f"{id} , {value} \\n"` per record with
the id as it read it (`record['id'].lower().strip()`) and the value as numpy prints it:
sentiment the argmax class (an integer), Quora `logits.sigmoid().round()` (a float32: `0.0` or
`1.0`), STS the float32 score at full precision (numpy's shortest round-trip form). Its STS
header is spelled `Predicted_Similiary` in every version of the starter's evaluation.py.
"""

from __future__ import annotations

from typing import IO, Sequence

import numpy as np

from mtbert_jax.tasks import TASKS

HEADERS = {"sst": "Predicted_Sentiment", "cfimdb": "Predicted_Sentiment",
           "quora": "Predicted_Is_Paraphrase", "sts": "Predicted_Similiary"}
# The starter's file names: {prefix}-{split}-output.csv
FILE_PREFIXES = {"sst": "sst", "cfimdb": "cfimdb", "quora": "para", "sts": "sts"}


def write_header(handle: IO[str], task: str) -> None:
    handle.write(f"id \t {HEADERS[task]} \n")


def write_records(handle: IO[str], task: str, record_ids: Sequence[str], labels: np.ndarray) -> None:
    for record_id, value in zip(record_ids, TASKS[task].kind.starter_values(labels)):
        handle.write(f"{record_id.lower().strip()} , {value} \n")
