"""Altered copies of training records: texts that only a teacher labels (distillation).

A student learns the teacher's function best where it sees the teacher's outputs on more than
the training records themselves, whose gold labels the teacher has already fitted (Tang et al.
2019, "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks", section 3.2).
Their rules, kept where they need no other model:

- each word is dropped with probability WORD_DROP (theirs masks it; a mask token is not shared by
  two vocabularies, and a teacher may read another one, so a dropped word is the one edit both
  tokenizers read alike);
- a single sentence is, with probability PHRASE_SHARE, cut to a phrase of 1 to PHRASE_WORDS
  consecutive words (SST's own labels were collected on such phrases);
- a pair keeps both sentences, each altered on its own (a phrase would lose what the pair relation
  is about).

Their part-of-speech substitution needs a tagger and is left out. Copies are drawn from
(seed, copy) alone, so a resumed run alters alike; every task draws from the same stream, which
ties nothing a step sees together, since a step trains one task. Words are what str.split finds;
a copy keeps at least one word of every sentence that had one.
"""

from __future__ import annotations

import numpy as np

from mtbert_jax.data.task_files import TaskRecords

WORD_DROP = 0.1
PHRASE_SHARE = 0.25
PHRASE_WORDS = 5


def _altered(sentence: str, rng: np.random.Generator, phrase: bool) -> str:
    words = sentence.split()
    if not words:
        return sentence
    if phrase:
        n = int(rng.integers(1, min(PHRASE_WORDS, len(words)) + 1))
        start = int(rng.integers(0, len(words) - n + 1))
        return " ".join(words[start:start + n])
    kept = [w for w, drop in zip(words, rng.random(len(words)) < WORD_DROP) if not drop]
    return " ".join(kept) if kept else words[int(rng.integers(len(words)))]


def altered_copies(records: TaskRecords, copies: int, seed: int) -> TaskRecords:
    """`copies` altered copies of every record, copy by copy (all of copy 1, then of copy 2, ...),
    unlabelled; record ids are the original's with `+k` for copy k."""
    if copies < 0:
        raise ValueError(f"copies={copies}: expected a number >= 0")
    single = len(records.texts) == 1
    ids: list[str] = []
    texts: list[list[str]] = [[] for _ in records.texts]
    for copy in range(1, copies + 1):
        rng = np.random.default_rng([seed, copy])
        for i, record_id in enumerate(records.record_ids):
            phrase = single and rng.random() < PHRASE_SHARE
            ids.append(f"{record_id}+{copy}")
            for column, altered in zip(records.texts, texts):
                altered.append(_altered(column[i], rng, phrase))
    return TaskRecords(records.task, records.path, ids, texts, None, [])
