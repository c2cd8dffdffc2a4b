"""Tokenize once: the on-disk cache, its key, truncation counts, both pair encodings."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_tsv
from mtbert_jax.data import tokenized as tokenized_data
from mtbert_jax.data.tokenized import Segments, load_task_data

STS = ["\tid\tsentence1\tsentence2\tsimilarity",
       "0\ta\tA man plays a guitar.\tA person plays music.\t3.5",
       "1\tb\tTwo dogs run.\t\t0.0",
       "2\tc\t" + "very " * 40 + "long.\tShort.\t1.2"]


@pytest.fixture
def sts_dir(tmp_path):
    write_tsv(tmp_path / "sts-train.csv", STS)
    write_tsv(tmp_path / "sts-dev.csv", STS)
    return tmp_path


def test_cross_and_bi_encodings(sts_dir, tokenizer, tmp_path):
    cross = load_task_data("sts", "dev", sts_dir, tokenizer, 16, "cross", cache_dir=tmp_path / "c")
    bi = load_task_data("sts", "dev", sts_dir, tokenizer, 16, "bi", cache_dir=tmp_path / "c")
    assert len(cross.segments) == 1 and len(bi.segments) == 2
    ids, types = cross.segments[0].get(0)
    assert types.tolist().count(1) > 0 and ids[0] == tokenizer.hf.cls_token_id
    a, _ = bi.segments[0].get(1)
    b, _ = bi.segments[1].get(1)
    assert a.tolist()[0] == tokenizer.hf.cls_token_id and b.tolist() == [101, 102]  # empty partner
    assert cross.num_truncated == 1 and bi.num_truncated == 1
    assert list(cross.record_ids) == ["a", "b", "c"]
    np.testing.assert_allclose(cross.labels, [3.5, 0.0, 1.2], rtol=1e-6)
    assert cross.lengths.max() == 16


def test_second_load_reads_the_cache(sts_dir, tokenizer, tmp_path, monkeypatch):
    first = load_task_data("sts", "train", sts_dir, tokenizer, 16, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").glob("*.npz"))) == 1

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(tokenized_data, "tokenize_records", no_tokenizing)
    second = load_task_data("sts", "train", sts_dir, tokenizer, 16, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(first.segments[0].ids, second.segments[0].ids)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert second.num_truncated == first.num_truncated
    # Another max length, another pair encoding or changed file contents: a new cache entry.
    monkeypatch.undo()
    load_task_data("sts", "train", sts_dir, tokenizer, 32, cache_dir=tmp_path / "c")
    load_task_data("sts", "train", sts_dir, tokenizer, 16, "bi", cache_dir=tmp_path / "c")
    write_tsv(sts_dir / "sts-train.csv", STS[:-1])
    assert len(load_task_data("sts", "train", sts_dir, tokenizer, 16, cache_dir=tmp_path / "c")) == 2
    assert len(list((tmp_path / "c").glob("*.npz"))) == 4


def test_skips_survive_the_cache(tmp_path, tokenizer):
    write_tsv(tmp_path / "ids-sst-train.csv", ["\tid\tsentence\tsentiment", "0\ta\tok\t1", "1\tb\tx\t"])
    for _ in range(2):
        data = load_task_data("sst", "train", tmp_path, tokenizer, 16, cache_dir=tmp_path / "c")
        assert len(data) == 1 and data.skipped == [(3, "sentiment='' is empty")]


@pytest.mark.parametrize("split", ["train", "dev"])
def test_a_header_only_or_unlabelled_file_is_an_error(tmp_path, tokenizer, split):
    """Before: a header-only training file trained its task on nothing, exit 0; a training file
    without its label column ended in KeyError('labels') deep in the objectives."""
    from mtbert_jax.errors import DataError
    path = tmp_path / f"ids-sst-{split}.csv"
    write_tsv(path, ["\tid\tsentence\tsentiment"])
    with pytest.raises(DataError, match=rf"ids-sst-{split}.csv: no sst records after the header"):
        load_task_data("sst", split, tmp_path, tokenizer, 16, cache_dir=tmp_path / "c")
    write_tsv(path, ["\tid\tsentence", "0\ta\tfine"])
    with pytest.raises(DataError, match=rf"ids-sst-{split}.csv: line 1: no 'sentiment' column, which a {split} file needs"):
        load_task_data("sst", split, tmp_path, tokenizer, 16, cache_dir=tmp_path / "c")
    if split == "train":  # every record skipped: nothing left to train on, said with the first skip
        write_tsv(path, ["\tid\tsentence\tsentiment", "0\ta\tfine\t", "1\tb\tok\tx"])
        with pytest.raises(DataError, match=r"no sst records after the header \(2 skipped as malformed, the first at line 2\)"):
            load_task_data("sst", split, tmp_path, tokenizer, 16, cache_dir=tmp_path / "c")


def test_real_quora_train(data_dir, tokenizer, tmp_path):
    data = load_task_data("quora", "train", data_dir, tokenizer, 128, cache_dir=tmp_path)
    assert len(data) == 15957 and len(data.skipped) == 2
    assert data.summary() == ("quora train: 15957 records, 4 truncated, 2 skipped "
                              "(line 2014: is_duplicate='' is empty; line 11201: is_duplicate='' is empty)")
    assert set(np.unique(data.labels)) == {0, 1}


def test_subset_is_the_records_in_the_given_order():
    rng = np.random.default_rng(0)
    ids = [rng.integers(1, 100, rng.integers(0, 9)).astype(np.int32) for _ in range(30)]
    types = [rng.integers(0, 2, len(x)).astype(np.int8) for x in ids]
    segments = Segments.from_lists(ids, types)
    keep = np.array([7, 3, 3, 29, 0, 12])
    sub = segments.subset(keep)
    assert len(sub) == len(keep) and sub.types.dtype == np.int8
    for k, i in enumerate(keep):
        np.testing.assert_array_equal(sub.get(k)[0], ids[i])
        np.testing.assert_array_equal(sub.get(k)[1], types[i])
    assert len(segments.subset(np.array([], np.int64))) == 0


@pytest.fixture(scope="module", params=["bert", "mpnet"])
def pair_tokenizer(request, tokenizer, minilm_dir, tmp_path_factory):
    """Each family's own pair layout: MiniLM's [CLS] a [SEP] b [SEP], a tiny MPNet's <s> a </s></s> b </s>."""
    if request.param == "bert":
        return tokenizer
    pytest.importorskip("torch")
    from mpnet_checkpoints import save_torch_mpnet

    from mtbert_jax.checkpoints.tokenizer import BertTextTokenizer

    return BertTextTokenizer(save_torch_mpnet(tmp_path_factory.mktemp("mpnet") / "model", minilm_dir / "vocab.txt"))


def test_swapped_pairs_are_the_tokenizer_s_pairs_in_the_other_order(pair_tokenizer):
    first = ["A man plays a guitar.", "Two dogs run.", "How do I learn Python fast?", ""]
    second = ["A person plays music.", "", "best way", "Why?"]
    forward = pair_tokenizer.tokenize(first, second, 64)
    backward = pair_tokenizer.tokenize(second, first, 64)
    separators = pair_tokenizer.family.pair_separators
    swapped = Segments.from_lists(forward.input_ids, forward.token_type_ids).swapped_pairs(separators=separators)
    expected = Segments.from_lists(backward.input_ids, backward.token_type_ids)
    np.testing.assert_array_equal(swapped.offsets, expected.offsets)
    np.testing.assert_array_equal(swapped.ids, expected.ids)  # the empty partners included
    np.testing.assert_array_equal(swapped.types, expected.types)
    twice = swapped.swapped_pairs(separators=separators)
    np.testing.assert_array_equal(twice.ids, np.concatenate(forward.input_ids))
    # Only some: the others stay as they were.
    some = Segments.from_lists(forward.input_ids, forward.token_type_ids).swapped_pairs(
        np.array([False, True, False, True]), separators)
    for i in range(4):
        np.testing.assert_array_equal(some.get(i)[0], (backward if i % 2 else forward).input_ids[i])


def test_swapping_keeps_truncated_pairs_whole_and_refuses_single_sentences(sts_dir, pair_tokenizer, tmp_path):
    tokenizer = pair_tokenizer
    cross = load_task_data("sts", "dev", sts_dir, tokenizer, 16, "cross", cache_dir=tmp_path / "c")
    assert cross.pair_separators == tokenizer.family.pair_separators  # as the family lays pairs out ...
    again = load_task_data("sts", "dev", sts_dir, tokenizer, 16, "cross", cache_dir=tmp_path / "c")
    assert again.pair_separators == cross.pair_separators  # ... read back from the cache
    assert cross.subset(np.array([2, 0])).pair_separators == cross.pair_separators
    swapped = cross.swapped()
    ids, types = swapped.segments[0].get(2)  # "very " * 40 + "long." was cut to fit 16 tokens
    short = tokenizer.tokenize(["Short."], None, 16).input_ids[0]
    assert ids[:len(short)].tolist() == short.tolist() and len(ids) == 16
    assert types.tolist() == [0] * len(short) + [1] * (16 - len(short))
    assert sorted(ids.tolist()) == sorted(cross.segments[0].get(2)[0].tolist())
    np.testing.assert_array_equal(swapped.swapped().segments[0].ids, cross.segments[0].ids)
    bi = load_task_data("sts", "dev", sts_dir, tokenizer, 16, "bi", cache_dir=tmp_path / "c")
    assert bi.swapped().segments == bi.segments[::-1]
    single = Segments.from_lists([np.array([101, 7, 102])], [np.zeros(3, np.int8)])
    with pytest.raises(ValueError, match="sequence 0 is not a cross-encoded pair"):
        single.swapped_pairs(separators=tokenizer.family.pair_separators)
