"""Reading the task files: formats, bad records, errors that name file and line."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_tsv
from mtbert_jax.data.task_files import TASKS, DataError, read_task_file, resolve_data_dir, task_file_paths

# The record counts of ../shared/data/README.md, except for two STS files whose README count
# is their line count, header included: sts-dev holds 863 records, sts-test-student 1,725.
COUNTS = {("sst", "train"): 8060, ("sst", "dev"): 1101, ("sst", "test"): 2210,
          ("cfimdb", "train"): 1707, ("cfimdb", "dev"): 245, ("cfimdb", "test"): 488,
          ("quora", "train"): 15959, ("quora", "dev"): 2247,
          ("sts", "train"): 5591, ("sts", "dev"): 863, ("sts", "test"): 1725}


@pytest.mark.parametrize("task, split", sorted(COUNTS))
def test_real_files_read_with_their_counts(data_dir, task, split):
    records = read_task_file(task_file_paths(data_dir, [task], split)[task], task,
                             lenient=(split == "train"))
    assert len(records) + len(records.skipped) == COUNTS[task, split]
    assert len(set(records.record_ids)) == len(records)
    if split == "test":
        assert records.labels is None
    else:
        assert len(records.labels) == len(records)
    if (task, split) == ("quora", "train"):  # the two records with an empty label
        assert [line for line, _ in records.skipped] == [2014, 11201]
        assert records.skipped[0] == (2014, "is_duplicate='' is empty")
    else:
        assert not records.skipped


def test_doubled_quotes_parse_as_csv_does(data_dir):
    records = read_task_file(data_dir / "quora-train.csv", "quora", lenient=True)
    # The file holds """Which ... """"the"""" here?""": the csv module's unquoting, once.
    assert records.texts[0][1] == ('"Which is correct grammar: I graduated from University of XXXX '
                                   'or I graduated from the University of XXXX? Do I need ""the"" here?"')


def test_test_student_header_with_extra_field(tmp_path):
    path = write_tsv(tmp_path / "ids-sst-test-student.csv",
                     ["0\t\tid\tsentence", "1\t0.0\tabc\t A film .", "2\t1.0\tdef\t"])
    records = read_task_file(path, "sst")
    assert records.record_ids == ["abc", "def"]
    assert records.texts == [[" A film .", ""]]  # an empty sentence is valid input
    assert records.labels is None


def _sst(tmp_path, *rows):
    return write_tsv(tmp_path / "ids-sst-train.csv", ["\tid\tsentence\tsentiment", *rows])


def test_training_file_skips_and_counts_bad_records(tmp_path):
    path = _sst(tmp_path, "0\ta\tgood\t3", "1\tb\tno label\t", "2\tc\ttoo\tmany\t1",
                "3\td\tbad label\tthree", "4\te\tfine\t4.0")
    records = read_task_file(path, "sst", lenient=True)
    assert records.record_ids == ["a", "e"]
    np.testing.assert_array_equal(records.labels, [3, 4])
    assert [line for line, _ in records.skipped] == [3, 4, 5]
    assert "5 fields, expected 4" in records.skipped[1][1]
    assert "not a number" in records.skipped[2][1]


def test_evaluation_file_bad_record_is_an_error(tmp_path):
    path = _sst(tmp_path, "0\ta\tgood\t3", "1\tb\tno label\t")
    with pytest.raises(DataError, match=r"ids-sst-train.csv: line 3: sentiment='' is empty"):
        read_task_file(path, "sst", lenient=False)


@pytest.mark.parametrize("task, header, row, words", [
    ("sst", "\tid\tsentence\tsentiment", "0\ta\ttext\t5", "outside the task's classes 0..4"),
    ("cfimdb", "\tid\tsentence\tsentiment", "0\ta\ttext\t2", "outside the task's classes 0..1"),
    ("sts", "\tid\tsentence1\tsentence2\tsimilarity", "0\ta\tx\ty\t5.2", "outside 0-5"),
    ("quora", "\tid\tsentence1\tsentence2\tis_duplicate", "0\ta\tx\ty\t0.5", "not a class number"),
])
def test_labels_out_of_range(tmp_path, task, header, row, words):
    path = write_tsv(tmp_path / "f.csv", [header, row])
    if words == "not a class number":  # unparseable as a class: skipped in training
        assert len(read_task_file(path, task, lenient=True).skipped) == 1
        return
    for lenient in (True, False):  # out of range is always an error
        with pytest.raises(DataError, match=f"line 2: .*{words}"):
            read_task_file(path, task, lenient=lenient)


def test_non_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "ids-sst-dev.csv"
    path.write_bytes(b"\tid\tsentence\tsentiment\n0\ta\tfine\t1\n1\tb\tcaf\xe9\t2\n")
    with pytest.raises(DataError, match=r"ids-sst-dev.csv: line 3: bytes that are not UTF-8"):
        read_task_file(path, "sst")


@pytest.mark.parametrize("lenient", [False, True])
def test_an_unclosed_quote_is_an_error_not_swallowed_records(tmp_path, lenient):
    """An opening quote never closed makes csv read the following records into one field (11
    records merged into 1, before); training files too, since skipping would lose them all."""
    rows = ['0\ta\t"an opening quote\t1'] + [f"{i}\tid{i}\tsentence {i}\t2" for i in range(1, 12)] + ['12\tz\tend"\t3']
    path = _sst(tmp_path, *rows)
    with pytest.raises(DataError, match=r"ids-sst-train.csv: line 2: a quoted field runs on to line 14, "
                                        r"taking 12 more line\(s\)"):
        read_task_file(path, "sst", lenient=lenient)


def test_missing_files_listed_in_one_error(tmp_path):
    write_tsv(tmp_path / "ids-sst-train.csv", ["\tid\tsentence\tsentiment"])
    with pytest.raises(DataError) as err:
        task_file_paths(tmp_path, ["sst", "quora", "sts"], "train")
    assert "quora-train.csv, sts-train.csv" in str(err.value)
    assert "ids-sst-train.csv, quora-train.csv, sts-train.csv" in str(err.value)


def test_header_without_expected_columns(tmp_path):
    path = write_tsv(tmp_path / "x.csv", ["\tid\ttext\tlabel", "0\ta\tb\t1"])
    with pytest.raises(DataError, match=r"line 1: header .* lacks column\(s\) \['sentence'\]"):
        read_task_file(path, "sst")


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("MTBERT_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert resolve_data_dir(str(tmp_path / "x")) == tmp_path / "x"  # the config field wins


def test_every_task_has_file_names():
    assert TASKS["sst"].file_name("test") == "ids-sst-test-student.csv"
    assert TASKS["quora"].file_name("dev") == "quora-dev.csv"
