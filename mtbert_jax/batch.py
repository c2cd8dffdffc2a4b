"""The batch: what the data pipeline hands the model, the objectives and evaluation, defined once.

A batch of one task is a dict of arrays. Per side (SIDES: "" for a sentence or a cross-encoded
pair, "_b" for the second sentence of a bi-encoded pair):

  padded (data/batching.py):  INPUT_IDS, TOKEN_TYPE_IDS, ATTENTION_MASK   [rows, seq] int32
  packed (data/packing.py):   INPUT_IDS, TOKEN_TYPE_IDS                   [rows, seq] int32
                              POSITION_IDS   [rows, seq]: restart at 0 for every example
                              TOKEN_EXAMPLE  [rows, seq]: the slot of the token's example, -1 padding
                              EXAMPLE_START  [slots]: flat index (row x seq + column) of each
                                             example's first token

and per example slot (a padded batch's rows are its slots):

  LABELS       [slots] int32 (classes) or float32 (scores)
  WEIGHTS      [slots] float32: 1 for a real example, 0 for filler
  EXAMPLE_IDS  [slots] int32: the example's index in the global batch (dropout masks follow it)
  INDEX        [slots] int32: the record's position in its file, -1 for filler; host only
  TEXT_KEY_B   [slots, 2] int32 (packed, MNRL's tasks): a hash of each second text
  TARGETS      [slots] or [slots, classes] float32 (distillation): the teachers' probabilities
               or score for the example
  GOLD         [slots] float32 (distillation with altered copies): 1 where LABELS is gold, 0
               where the example learns its TARGETS alone

A batch is packed exactly when it has TOKEN_EXAMPLE.
"""

from __future__ import annotations

from typing import Any, Mapping

INPUT_IDS, TOKEN_TYPE_IDS, ATTENTION_MASK = "input_ids", "token_type_ids", "attention_mask"
POSITION_IDS, TOKEN_EXAMPLE, EXAMPLE_START = "position_ids", "token_example", "example_start"
LABELS, WEIGHTS, EXAMPLE_IDS, INDEX, TEXT_KEY_B = "labels", "weights", "example_ids", "index", "text_key_b"
TARGETS = "targets"
GOLD = "gold"

SIDES = ("", "_b")
SECOND = SIDES[1]
# The per-side fields the model reads (each with a side's suffix).
MODEL_INPUTS = (INPUT_IDS, TOKEN_TYPE_IDS, ATTENTION_MASK, POSITION_IDS, TOKEN_EXAMPLE, EXAMPLE_START)
HOST_ONLY = (INDEX,)  # never sent to a device


def is_packed(batch: Mapping[str, Any]) -> bool:
    return TOKEN_EXAMPLE in batch


def sides(batch: Mapping[str, Any]) -> list[str]:
    """The batch's sides: [""] or ["", "_b"]."""
    return [s for s in SIDES if INPUT_IDS + s in batch]


def model_inputs(batch: Mapping[str, Any]) -> dict:
    """Only what the model reads: a prediction's inputs (no labels, weights or index)."""
    return {k: v for k, v in batch.items() if k.startswith(MODEL_INPUTS)}


def for_devices(batch: Mapping[str, Any]) -> dict:
    """The batch without its host-only fields."""
    return {k: v for k, v in batch.items() if k not in HOST_ONLY}


def check(batch: Mapping[str, Any]) -> None:
    """Raises ValueError naming the field when the batch does not have this layout's fields and
    shapes (a batch built by hand, a test's, a benchmark's)."""
    found = sides(batch)
    if not found:
        raise ValueError(f"a batch needs {INPUT_IDS!r}; it has {sorted(batch)}")
    slots = batch[WEIGHTS].shape[0] if WEIGHTS in batch else None
    packed = is_packed(batch)
    for side in found:
        tokens = batch[INPUT_IDS + side].shape
        needed = (TOKEN_TYPE_IDS, POSITION_IDS, TOKEN_EXAMPLE) if packed else (TOKEN_TYPE_IDS, ATTENTION_MASK)
        for name in needed:
            key = name + side
            if key not in batch:
                raise ValueError(f"a {'packed' if packed else 'padded'} batch needs {key!r}")
            if batch[key].shape != tokens:
                raise ValueError(f"batch field {key!r} has shape {batch[key].shape}, {INPUT_IDS + side!r} {tokens}")
        if packed and slots is not None and batch[EXAMPLE_START + side].shape != (slots,):
            raise ValueError(f"batch field {EXAMPLE_START + side!r} has shape {batch[EXAMPLE_START + side].shape}, "
                             f"expected ({slots},): one per example slot")
        if not packed and slots is not None and tokens[0] != slots:
            raise ValueError(f"batch field {INPUT_IDS + side!r} has {tokens[0]} rows, {WEIGHTS!r} {slots}")
    for name in (LABELS, EXAMPLE_IDS, INDEX, TARGETS, GOLD):
        if name in batch and slots is not None and batch[name].shape[0] != slots:
            raise ValueError(f"batch field {name!r} has {batch[name].shape[0]} entries, {WEIGHTS!r} {slots}")
