"""Distillation's altered copies of training records: words dropped, phrases cut, drawn from the
seed alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mtbert_jax.data import augment
from mtbert_jax.data.augment import altered_copies
from mtbert_jax.data.task_files import TaskRecords

SENTENCES = [f"w{i}a w{i}b w{i}c w{i}d w{i}e w{i}f w{i}g w{i}h w{i}i w{i}j" for i in range(400)]


def records(*columns: list[str]) -> TaskRecords:
    return TaskRecords("sst" if len(columns) == 1 else "quora", Path("train.csv"),
                       [f"id{i}" for i in range(len(columns[0]))], [list(c) for c in columns],
                       np.zeros(len(columns[0]), np.int32), [])


def is_subsequence(part: list[str], whole: list[str]) -> bool:
    it = iter(whole)
    return all(w in it for w in part)


def is_phrase(part: list[str], whole: list[str]) -> bool:
    """Consecutive words, at most PHRASE_WORDS of them (a word drop keeps about 9 of 10: that it
    keeps 5 or fewer consecutive words of 10 is vanishingly rare)."""
    return len(part) <= augment.PHRASE_WORDS and any(whole[i:i + len(part)] == part for i in range(len(whole)))


def test_single_sentences_lose_words_or_become_short_phrases():
    out = altered_copies(records(SENTENCES), copies=2, seed=0)
    assert out.labels is None and out.skipped == []
    assert out.record_ids == [f"id{i}+{k}" for k in (1, 2) for i in range(400)]
    phrases = dropped = words = 0
    for i, text in enumerate(out.texts[0]):
        original = SENTENCES[i % 400].split()
        kept = text.split()
        assert 1 <= len(kept) and is_subsequence(kept, original), text
        if is_phrase(kept, original):
            phrases += 1
        else:
            dropped += len(original) - len(kept)
            words += len(original)
    # About a quarter phrases, about one word in ten dropped from the rest.
    assert abs(phrases / len(out.texts[0]) - augment.PHRASE_SHARE) < 0.05
    assert abs(dropped / words - augment.WORD_DROP) < 0.02


def test_pairs_alter_both_sentences_on_their_own_and_never_to_a_phrase():
    second = [s.replace("w", "v") for s in SENTENCES]
    out = altered_copies(records(SENTENCES, second), copies=1, seed=0)
    assert len(out.texts) == 2
    changed = [0, 0]
    for i in range(400):
        for side, column in enumerate((SENTENCES, second)):
            kept, original = out.texts[side][i].split(), column[i].split()
            assert is_subsequence(kept, original) and not is_phrase(kept, original)
            changed[side] += kept != original
    # Each side loses a word in about 1 - 0.9^10 = 65% of pairs, independently of the other.
    assert all(abs(c / 400 - (1 - (1 - augment.WORD_DROP) ** 10)) < 0.1 for c in changed)
    assert sum(a != b for a, b in zip(out.texts[0], out.texts[1])) == 400


def test_copies_are_drawn_from_the_seed_alone_and_keep_a_word():
    a, b = (altered_copies(records(SENTENCES), copies=1, seed=5) for _ in range(2))
    assert a.texts == b.texts
    assert altered_copies(records(SENTENCES), copies=1, seed=6).texts != a.texts
    # The first copy is the same however many follow it.
    assert altered_copies(records(SENTENCES), copies=3, seed=5).texts[0][:400] == a.texts[0]
    short = altered_copies(records(["one"] * 200 + [""]), copies=1, seed=0)
    assert short.texts[0] == ["one"] * 200 + [""]
    assert altered_copies(records(SENTENCES), copies=0, seed=0).record_ids == []
    with pytest.raises(ValueError, match="copies=-1"):
        altered_copies(records(SENTENCES), copies=-1, seed=0)
