"""Encoder families: what differs between the BERT-like encoders this project runs, decided once.

A family is one object (as a task's kind is in tasks.py) that owns everything its checkpoints do
differently; the encoder, the checkpoint reader and writer, the tokenizer and the task exports
ask it and never test a model_type themselves:
- BERT (model_type "bert", MiniLM included): token-type embeddings, positions from 0, no
  relative bias; pairs `[CLS] a [SEP] b [SEP]` with token types 0/1.
- MPNet (model_type "mpnet", all-mpnet-base-v2; transformers' modeling_mpnet.py): no token
  types; position ids offset by 2 (transformers' fixed padding_idx 1, + 1), so 512 of 514 rows
  are usable; a bucketed relative position bias (`encoder.relative_attention_bias`, 32 buckets x
  heads, shared by all layers) added to the scaled attention scores; tensors
  `attention.attn.{q,k,v,o}`; pairs `<s> a </s></s> b </s>` from its tokenizer.json.

The encoder's parameters keep BERT's names for every family (`attention/self/query`, ...), so
the optimizer's groups, the adapters and the exports of task tensors read the same everywhere;
a family's `tensor_renames` turn BERT's Hugging Face names into its own.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

# transformers' MPNet computes buckets with these whatever config.json says
# (MPNetEncoder.compute_position_bias / relative_position_bucket): a config with another bucket
# count is refused rather than computed differently.
RELATIVE_BUCKETS = 32
RELATIVE_MAX_DISTANCE = 128


class EncoderFamily:
    """What one family of checkpoints does its own way; one instance per family."""

    model_type: str  # config.json's model_type
    architecture: str  # transformers' class of the bare encoder (what AutoModel builds)
    base_prefix: str  # where transformers' *For* classes keep the encoder: "bert.", "mpnet."
    sequence_classification: str  # transformers' class for pooler -> linear heads
    # Where that class keeps the pooler's dense layer and the head's linear layer.
    classifier_pooler: str
    classifier_head: str
    token_types: bool  # token-type (segment) embeddings
    position_offset: int  # position embedding row of a sequence's first token
    relative_buckets: int  # buckets of the relative position bias (0: none)
    default_layer_norm_eps: float  # when config.json does not say
    # (BERT's name fragment, this family's) in Hugging Face tensor names.
    tensor_renames: tuple[tuple[str, str], ...] = ()
    # The config.json keys read into BertConfig and written back (model_type and architectures apart).
    config_keys: tuple[str, ...]
    hf_config_constants: Mapping[str, Any]  # also written to an exported config.json
    # The transformers tokenizer class built from a checkpoint directory's files (tokenizer.json or
    # vocab.txt); the class, not the files, decides how a pair is laid out.
    tokenizer_class: str
    # How a sentence pair is laid out, with A and B for the two sentences' tokens. Both families'
    # layouts are `<first> A <separators> B <last>`, which swapping a pair's sentences inside its
    # tokens (schedule.swap_pairs, model.symmetric_pairs; data/tokenized.py) relies on.
    pair_template: str
    # Separator tokens between a pair's two sentences (BERT's one [SEP], MPNet's </s></s>): what
    # swapping a pair's sentences inside its tokens (data/tokenized.py) needs to know of the layout.
    pair_separators: int
    # The tokenizer gives token types 0/1 itself; otherwise the tokenizer marks them as BERT's are
    # (1 from the second sentence's first token, separators before it included).
    tokenizer_types: bool = True

    def hf_name(self, bert_name: str) -> str:
        """A tensor's Hugging Face name in this family from its name in BERT."""
        for bert, own in self.tensor_renames:
            bert_name = bert_name.replace(bert, own)
        return bert_name

    def config_values(self, raw: Mapping[str, Any], source: str) -> tuple[dict, list[str]]:
        """(BertConfig field values, problems) from a parsed config.json of this family."""
        values = {k: raw[k] for k in self.config_keys if raw.get(k) is not None}
        values.setdefault("layer_norm_eps", self.default_layer_norm_eps)
        return values | {"model_type": self.model_type}, []

    def check(self, config) -> list[str]:
        """Problems of a BertConfig that this family cannot run."""
        problems = []
        if self.token_types and not (isinstance(config.type_vocab_size, int) and config.type_vocab_size > 0):
            problems.append(f"type_vocab_size={config.type_vocab_size!r}: expected a positive integer")
        if not self.token_types and config.type_vocab_size != 0:
            problems.append(f"type_vocab_size={config.type_vocab_size!r}: {self.model_type} has no token types")
        if config.relative_attention_num_buckets != self.relative_buckets:
            problems.append(f"relative_attention_num_buckets={config.relative_attention_num_buckets!r}: "
                            f"{self.model_type} has {self.relative_buckets}")
        if config.max_position_embeddings <= self.position_offset:
            problems.append(f"max_position_embeddings={config.max_position_embeddings!r}: expected more than "
                            f"{self.position_offset}")
        return problems

    def hf_config(self, config) -> dict[str, Any]:
        """The config.json that transformers' `architecture` reads back as this encoder."""
        values = {k: getattr(config, k) for k in self.config_keys}
        return {**values, "model_type": self.model_type, "architectures": [self.architecture],
                **self.hf_config_constants}

    def __repr__(self) -> str:
        return self.model_type


class Bert(EncoderFamily):
    model_type = "bert"
    architecture = "BertModel"
    base_prefix = "bert."
    sequence_classification = "BertForSequenceClassification"
    classifier_pooler = "bert.pooler.dense"
    classifier_head = "classifier"
    token_types = True
    position_offset = 0
    relative_buckets = 0
    default_layer_norm_eps = 1e-12
    config_keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                   "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "hidden_dropout_prob",
                   "attention_probs_dropout_prob", "hidden_act", "pad_token_id")
    hf_config_constants = {"position_embedding_type": "absolute", "initializer_range": 0.02}
    tokenizer_class = "BertTokenizerFast"
    pair_template = "[CLS] A [SEP] B [SEP]"
    pair_separators = 1

    def config_values(self, raw, source):
        values, problems = super().config_values(raw, source)
        position_type = raw.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            problems.append(f"position_embedding_type={position_type!r}: only 'absolute' position embeddings "
                            "are supported (no relative_key / relative_key_query)")
        if raw.get("is_decoder") or raw.get("add_cross_attention"):
            problems.append("decoder / cross-attention BERT is not supported")
        return values, problems


class MPNet(EncoderFamily):
    model_type = "mpnet"
    architecture = "MPNetModel"
    base_prefix = "mpnet."
    # MPNetForSequenceClassification's head is dropout, dense, tanh, dropout, out_proj on <s>: at
    # prediction time BERT's pooler then a linear layer, kept under other names.
    sequence_classification = "MPNetForSequenceClassification"
    classifier_pooler = "classifier.dense"
    classifier_head = "classifier.out_proj"
    token_types = False
    position_offset = 2  # MPNetEmbeddings.padding_idx is 1 whatever config.json says; positions start after it
    relative_buckets = RELATIVE_BUCKETS
    default_layer_norm_eps = 1e-12  # MPNetConfig's; all-mpnet-base-v2's config.json says 1e-5
    tensor_renames = ((".attention.self.query.", ".attention.attn.q."),
                      (".attention.self.key.", ".attention.attn.k."),
                      (".attention.self.value.", ".attention.attn.v."),
                      (".attention.output.dense.", ".attention.attn.o."),
                      (".attention.output.LayerNorm.", ".attention.LayerNorm."))
    config_keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                   "max_position_embeddings", "layer_norm_eps", "hidden_dropout_prob",
                   "attention_probs_dropout_prob", "hidden_act", "pad_token_id", "relative_attention_num_buckets")
    hf_config_constants = {"bos_token_id": 0, "eos_token_id": 2, "initializer_range": 0.02}
    # BertTokenizerFast on an MPNet directory pairs as BERT does; its own tokenizer (from
    # tokenizer.json) makes `<s> A </s></s> B </s>`, with no token types.
    tokenizer_class = "MPNetTokenizerFast"
    pair_template = "<s> A </s></s> B </s>"
    pair_separators = 2
    tokenizer_types = False

    def config_values(self, raw, source):
        values, problems = super().config_values(raw, source)
        values.setdefault("relative_attention_num_buckets", RELATIVE_BUCKETS)
        values.setdefault("pad_token_id", 1)
        return values | {"type_vocab_size": 0}, problems


BERT, MPNET = Bert(), MPNet()
FAMILIES = {f.model_type: f for f in (BERT, MPNET)}


def relative_position_buckets(seq_len: int, num_buckets: int = RELATIVE_BUCKETS,
                              max_distance: int = RELATIVE_MAX_DISTANCE) -> np.ndarray:
    """[seq, seq] int32 bucket of each (query, key) pair of columns, as transformers' MPNet
    computes it: half the buckets per direction (keys before / after the query), exact below
    num_buckets / 4 tokens apart, log-spaced up to max_distance, the last bucket beyond.

    Computed in float32 as torch does, so that distances on a bucket boundary fall alike. In a
    packed row the columns' difference is the positions' difference inside one example's
    contiguous span, and tokens of different examples never attend to each other."""
    columns = np.arange(seq_len)
    n = columns[:, None] - columns[None, :]  # query - key: transformers' -relative_position
    half = num_buckets // 2
    bucket = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    exact = half // 2
    with np.errstate(divide="ignore"):  # log(0) where n == 0: that is an exact bucket anyway
        scaled = (np.log(n.astype(np.float32) / np.float32(exact)) / np.float32(math.log(max_distance / exact))
                  * np.float32(half - exact))
    large = exact + np.where(n < exact, 0, scaled).astype(np.int64)
    bucket += np.where(n < exact, n, np.minimum(large, half - 1))
    return bucket.astype(np.int32)
