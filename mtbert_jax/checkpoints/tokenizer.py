"""A checkpoint's own tokenizer, built offline from its directory's files by its encoder family.

The family (model/families.py) names the transformers class, and the class, not the files, lays
out pairs: BERT's BertTokenizerFast makes sentences `[CLS] a [SEP]` and pairs
`[CLS] a [SEP] b [SEP]` with token types 0/1; MPNet's MPNetTokenizerFast (from its
tokenizer.json) makes `<s> a </s>` and `<s> a </s></s> b </s>` (BertTokenizerFast would pair it as
BERT). MPNet has no token types, but they are marked as BERT's are (1 from the pair's second
separator on), so that a pair's two parts stay known. Truncation to `max_length` (pairs
longest-first), int32 numpy output.
"""

from __future__ import annotations

import os

# transformers announces "PyTorch was not found" on import; nothing here needs torch at run time.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import copy  # noqa: E402
import dataclasses
import hashlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mtbert_jax.checkpoints.hf import CheckpointError, resolve_checkpoint_dir
from mtbert_jax.errors import first_line
from mtbert_jax.model.bert_config import BertConfig
from mtbert_jax.model.families import BERT, EncoderFamily


@dataclasses.dataclass
class TokenizedTexts:
    """Unpadded token ids: one int32 array per record."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray]
    truncated: np.ndarray  # [n] bool: the record was cut to max_length

    @property
    def num_truncated(self) -> int:
        return int(self.truncated.sum())

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclasses.dataclass
class PaddedBatch:
    input_ids: np.ndarray  # [batch, seq] int32
    token_type_ids: np.ndarray  # [batch, seq] int32
    attention_mask: np.ndarray  # [batch, seq] int32, 1 for real tokens


class BertTextTokenizer:
    """The checkpoint's WordPiece tokenizer (BERT's or MPNet's, as its config.json says), with
    batch encoding to ragged or padded int32."""

    def __init__(self, checkpoint: str | Path | None = None):
        import transformers

        directory = resolve_checkpoint_dir(checkpoint)
        self.directory = directory
        if not any((directory / f).exists() for f in ("vocab.txt", "tokenizer.json")):
            raise CheckpointError(f"{directory}: no tokenizer files (vocab.txt or tokenizer.json)")
        self.family = _family_of(directory)
        try:
            self.hf = getattr(transformers, self.family.tokenizer_class).from_pretrained(
                str(directory), local_files_only=True)
        except (OSError, ValueError) as e:  # a damaged tokenizer.json or vocab.txt
            raise CheckpointError(f"{directory}: {self.family.tokenizer_class} cannot read the tokenizer files "
                                  f"({first_line(e)})") from None
        # The backend batch-encodes in Rust. Some tokenizer.json files carry their own padding
        # and truncation settings (all-MiniLM and all-mpnet pad to 128): clear them, set ours per call.
        self._backend = copy.deepcopy(self.hf.backend_tokenizer)
        self._backend.no_padding()
        self._backend.no_truncation()
        self.pad_token_id = self.hf.pad_token_id

    @property
    def fingerprint(self) -> str:
        """A hash of the vocabulary, lower-casing and pair layout: tokenized data can be cached
        under it. BERT's leaves its family out, so that caches made before families stay valid."""
        vocab = sorted(self.hf.get_vocab().items())
        key = (vocab, getattr(self.hf, "do_lower_case", None))
        if self.family is not BERT:  # the same vocabulary may pair differently
            key += (self.family.model_type,)
        return hashlib.sha256(repr(key).encode("utf-8")).hexdigest()[:16]

    def tokenize(self, texts: Sequence[str], text_pairs: Optional[Sequence[str]] = None,
                 max_length: int = 128) -> TokenizedTexts:
        """Texts (and their pair partners) -> unpadded ids with special tokens, truncated."""
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(text_pairs)} pair partners")
        min_length = 3 if text_pairs is not None else 2
        if max_length < min_length:
            raise ValueError(f"max_length={max_length} cannot hold the special tokens")
        self._backend.enable_truncation(max_length, strategy="longest_first")
        inputs = list(texts) if text_pairs is None else list(zip(texts, text_pairs))
        encodings = self._backend.encode_batch(inputs)
        if self.family.tokenizer_types or text_pairs is None:
            types = [np.asarray(e.type_ids, np.int32) for e in encodings]
        else:  # as BERT's: 0 up to the first sentence's separator, 1 after it
            types = [(np.arange(len(e.ids)) >= e.sequence_ids.count(0) + 2).astype(np.int32) for e in encodings]
        return TokenizedTexts(
            input_ids=[np.asarray(e.ids, np.int32) for e in encodings],
            token_type_ids=types,
            truncated=np.asarray([bool(e.overflowing) for e in encodings], bool))

    def __call__(self, texts: Sequence[str], text_pairs: Optional[Sequence[str]] = None,
                 max_length: int = 128, pad_to: Optional[int] = None) -> PaddedBatch:
        """Texts -> a padded batch ([batch, seq] int32), padded to `pad_to` or the longest."""
        tokenized = self.tokenize(texts, text_pairs, max_length)
        return pad(tokenized.input_ids, tokenized.token_type_ids, pad_to, self.pad_token_id)


def _family_of(directory: Path) -> EncoderFamily:
    """The directory's encoder family, from its config.json (BERT's tokenizer without one)."""
    if not (directory / "config.json").exists():
        return BERT
    return BertConfig.from_json_file(directory / "config.json").family


def pad(input_ids: Sequence[np.ndarray], token_type_ids: Sequence[np.ndarray],
        length: Optional[int] = None, pad_token_id: int = 0) -> PaddedBatch:
    """Right-pads ragged sequences to `length` (default: the longest) -> [batch, length]."""
    longest = max((len(x) for x in input_ids), default=0)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"a sequence of {longest} tokens does not fit the padded length {length}")
    batch = len(input_ids)
    ids = np.full((batch, length), pad_token_id, np.int32)
    types = np.zeros((batch, length), np.int32)
    mask = np.zeros((batch, length), np.int32)
    for row, (x, t) in enumerate(zip(input_ids, token_type_ids)):
        ids[row, :len(x)], types[row, :len(t)], mask[row, :len(x)] = x, t, 1
    return PaddedBatch(ids, types, mask)
