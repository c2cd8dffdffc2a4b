import numpy as np
import pytest

from mtbert_jax.checkpoints.tokenizer import BertTextTokenizer, pad


def test_single_sentences(tokenizer):
    batch = tokenizer(["Hello world", ""], max_length=16)
    cls, sep = tokenizer.hf.cls_token_id, tokenizer.hf.sep_token_id
    assert batch.input_ids.dtype == np.int32 and batch.input_ids.shape == (2, 4)
    assert batch.input_ids[0].tolist() == [cls, *tokenizer.hf.convert_tokens_to_ids(["hello", "world"]), sep]
    assert batch.input_ids[1].tolist() == [cls, sep, 0, 0]  # an empty sentence is valid input
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert not batch.token_type_ids.any()


def test_pairs_have_cls_a_sep_b_sep_and_types(tokenizer):
    batch = tokenizer(["a cat"], ["the dog"], max_length=16)
    tokens = tokenizer.hf.convert_ids_to_tokens(batch.input_ids[0].tolist())
    assert tokens == ["[CLS]", "a", "cat", "[SEP]", "the", "dog", "[SEP]"]
    assert batch.token_type_ids[0].tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_truncation_is_longest_first_and_counted(tokenizer):
    a = ["one two three four five six seven eight nine ten", "short", "x"]
    b = ["alpha", "a b c d e f g h i j k l m n o p", "y"]
    out = tokenizer.tokenize(a, b, max_length=10)
    assert out.num_truncated == 2
    expected = tokenizer.hf(a, b, truncation="longest_first", max_length=10)
    assert [x.tolist() for x in out.input_ids] == expected["input_ids"]
    assert [x.tolist() for x in out.token_type_ids] == expected["token_type_ids"]
    assert max(len(x) for x in out.input_ids) == 10


def test_padding_to_a_fixed_length(tokenizer):
    batch = tokenizer(["a b c"], max_length=16, pad_to=8)
    assert batch.input_ids.shape == (1, 8)
    with pytest.raises(ValueError, match="does not fit"):
        pad([np.ones(9, np.int32)], [np.zeros(9, np.int32)], 8)


def test_fingerprint_depends_on_vocabulary(tokenizer, tmp_path, minilm_dir):
    vocab = (minilm_dir / "vocab.txt").read_text().splitlines()
    (tmp_path / "vocab.txt").write_text("\n".join(vocab[:-1] + ["zzzznewtoken"]) + "\n")
    assert BertTextTokenizer(tmp_path).fingerprint != tokenizer.fingerprint
    assert BertTextTokenizer(minilm_dir).fingerprint == tokenizer.fingerprint


def test_no_pytorch_advice_where_torch_is_absent():
    """transformers prints "PyTorch was not found..." on import when torch is missing (every
    evaluate.py run of a runtime-only install); nothing here needs torch, so it stays quiet."""
    import subprocess
    import sys
    hide_torch = ("import importlib.util as u; find = u.find_spec; "
                  "u.find_spec = lambda name, *a, **k: None if name == 'torch' else find(name, *a, **k); "
                  "from mtbert_jax.checkpoints.tokenizer import BertTextTokenizer; BertTextTokenizer('default'); "
                  "from transformers.utils import is_torch_available; print(is_torch_available())")
    import os
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSFORMERS_")}  # as a user's shell
    result = subprocess.run([sys.executable, "-c", hide_torch], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"  # torch really looked absent to transformers
    assert "PyTorch was not found" not in result.stderr
