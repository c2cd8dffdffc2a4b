"""PyTorch for the exported task models that no stock class computes: bi-encoder pair heads and
task adapters.

`convert.py` writes such a task as a BertModel (or MPNetModel) directory plus head.safetensors
(the task's own tensors: its head, the shared pair layer, its adapters; torch.nn.Linear's
[out, in] layout) and head.json (what they mean). `TaskModel` runs the encoder through
transformers' AutoModel (BertModel, MPNetModel: their layers have the same parts), adds the
adapters with forward hooks, and computes the head in a few lines, reproducing
mtbert-jax's float32 predictions (model/heads.py, model/adapters.py, model/multitask.py). It
imports torch, transformers and safetensors only: copy this file to use the model without
mtbert-jax.

    model = TaskModel("hf/sts")
    model.predict([("A man plays a guitar.", "Someone plays music.")])  # tensor([score])
    TaskModel("hf/sst").predict(["A lovely film."])  # tensor([[5 class logits]])

Outputs are the head's: class logits, Quora's logit (its sigmoid is the paraphrase probability),
STS's score. A run trained with model.symmetric_pairs averaged the two orders of a pair: average
predict(pairs) and predict of the swapped pairs for its prediction.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

COSINE_SCALE = 20.0  # the cosine head's s = 20 cos(W u, W v), and bi_cosine's Quora logit
SCORE_MAX = 5.0  # STS scores lie in 0..5
MASK_BIAS = -1e9  # added to the attention scores of padding keys


def pool(kind: str, sequence: torch.Tensor, mask: torch.Tensor, pooler: Callable) -> torch.Tensor:
    """[batch, seq, hidden] -> [batch, hidden]: BERT's pooler, the [CLS] vector, or the mean /
    max over the real tokens (a row without tokens pools to 0)."""
    if kind == "pooler":
        return pooler(sequence)
    if kind == "cls":
        return sequence[:, 0]
    real = mask.unsqueeze(-1).bool()
    if kind == "mean":
        return (sequence * real).sum(1) / real.sum(1).clamp(min=1)
    if kind == "max":
        top = sequence.masked_fill(~real, torch.finfo(sequence.dtype).min).max(1).values
        return torch.where(real.any(1), top, torch.zeros_like(top))
    raise ValueError(f"pooling {kind!r}: expected pooler, cls, mean or max")


def cosine(u: torch.Tensor, v: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1)).clamp(min=eps)


def pair_features(mode: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if mode == "bi_sum":
        return u + v
    if mode == "bi_concat":
        return torch.cat([u, v], -1)
    if mode == "bi_concat_diff_prod":
        return torch.cat([u, v, (u - v).abs(), u * v], -1)
    if mode == "bi_cosine_concat":
        return torch.cat([u, v, cosine(u, v).unsqueeze(-1)], -1)
    raise ValueError(f"pair head {mode!r} has no feature vector")


class TaskModel(torch.nn.Module):
    """An exported task: `predict(sentences)` -> [n, classes] logits, `predict(pairs)` -> [n]."""

    def __init__(self, directory: str | Path):
        super().__init__()
        directory = Path(directory)
        self.head_config = json.loads((directory / "head.json").read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(str(directory))
        self.encoder = AutoModel.from_pretrained(str(directory), add_pooling_layer=True).eval()
        path = directory / "head.safetensors"
        self.tensors = load_file(str(path)) if path.exists() else {}
        self._bias = None  # the batch's attention bias, for the adapters' attention
        for position, index in enumerate(self.head_config.get("adapter_layers", [])):
            if self.head_config["adapter"] in ("pals", "low_rank", "low_rank_top_layer"):
                layer = self.encoder.encoder.layer[index]
                layer.register_forward_pre_hook(self._remember_input, with_kwargs=True)
                layer.output.register_forward_pre_hook(functools.partial(self._add_adapter, index, position))

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.tensors[f"{name}.weight"], self.tensors[f"{name}.bias"])

    # ------------------------------------------------------------------ adapters

    def _remember_input(self, layer, args, kwargs):
        self._layer_input = args[0] if args else kwargs["hidden_states"]

    def _add_adapter(self, index: int, position: int, output, args):
        """Inside layer `index`'s last residual sum: LN(FFN(A) + A + TS(h)), h the layer's input
        (BertOutput computes LN(dense(x) + input_tensor): TS(h) joins its input_tensor)."""
        h = self._layer_input
        if self.head_config["adapter"] == "pals":  # TS(h) = GELU(V^D(MHA(V^E h)))
            x = self.attention(f"adapters.attention_{position}", self.linear("adapters.down", h),
                               self.head_config["adapter_heads"])
            extra = F.gelu(self.linear("adapters.up", x))
        else:  # low rank: V^D(GELU(V^E h))
            extra = self.linear(f"adapters.low_rank_{index}.up", F.gelu(self.linear(f"adapters.low_rank_{index}.down", h)))
        hidden, attention_output = args
        return hidden, attention_output + extra

    def attention(self, prefix: str, x: torch.Tensor, heads: int) -> torch.Tensor:
        """Multi-head self-attention without an output matrix: [batch, seq, d] -> [batch, seq, d]."""
        batch, seq, size = x.shape

        def project(name):
            return self.linear(f"{prefix}.{name}", x).view(batch, seq, heads, size // heads).transpose(1, 2)

        scores = project("query") @ project("key").transpose(-1, -2) / math.sqrt(size // heads) + self._bias
        return (scores.softmax(-1) @ project("value")).transpose(1, 2).reshape(batch, seq, size)

    def top_layer(self, h: torch.Tensor) -> torch.Tensor:
        """The task's own post-LayerNorm BERT layer above the encoder (no relative position bias,
        also above MPNet)."""
        p, config = "adapters.top_layer", self.encoder.config

        def norm(name, x):
            return F.layer_norm(x, x.shape[-1:], self.tensors[f"{name}.weight"], self.tensors[f"{name}.bias"],
                                config.layer_norm_eps)

        context = self.attention(f"{p}.attention.self", h, config.num_attention_heads)
        a = norm(f"{p}.attention.output.LayerNorm", self.linear(f"{p}.attention.output.dense", context) + h)
        ffn = self.linear(f"{p}.output.dense", F.gelu(self.linear(f"{p}.intermediate.dense", a)))
        return norm(f"{p}.output.LayerNorm", ffn + a)

    # ------------------------------------------------------------------ the task

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> torch.Tensor:
        """[n, hidden] vectors of sentences (`[CLS] a [SEP]`) or cross-encoded pairs
        (`[CLS] a [SEP] b [SEP]`; MPNet's `<s> a </s></s> b </s>`), truncated as in training."""
        batch = self.tokenizer(list(texts), None if pairs is None else list(pairs), padding=True, truncation=True,
                               max_length=self.head_config["max_length"], return_tensors="pt")
        self._bias = (1.0 - batch["attention_mask"][:, None, None, :].float()) * MASK_BIAS
        sequence = self.encoder(**batch).last_hidden_state
        if "adapters.top_layer.output.dense.weight" in self.tensors:
            sequence = self.top_layer(sequence)
        return pool(self.head_config["pooling"], sequence, batch["attention_mask"], self.encoder.pooler)

    def score(self, vectors: Sequence[torch.Tensor]) -> torch.Tensor:
        """The head on the sentence vector(s): [n, classes] logits, or [n] for a pair task."""
        mode, regression = self.head_config["pair_head"], self.head_config["regression"]
        if mode == "bi_cosine":  # no parameters
            c = cosine(*vectors)
            return SCORE_MAX / 2 * (1 + c) if regression else COSINE_SCALE * c
        if mode == "cosine":
            s = COSINE_SCALE * cosine(*(self.linear("head", v) for v in vectors))
            return SCORE_MAX * torch.sigmoid(s) if regression else s
        x = vectors[0] if mode in (None, "cross") else pair_features(mode, *vectors)
        if "pair_hidden.weight" in self.tensors:  # exact (erf) GELU, as the encoder's
            x = F.gelu(self.linear("pair_hidden", x))
        out = self.linear("head", x)
        return out if mode is None else out[:, 0]

    @torch.inference_mode()
    def predict(self, inputs: Sequence[str] | Sequence[tuple[str, str]], batch_size: int = 32) -> torch.Tensor:
        """Head outputs of sentences, or of (sentence1, sentence2) pairs in the order given."""
        outputs, mode = [], self.head_config["pair_head"]
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            if mode is None:
                vectors = [self.encode(chunk)]
            elif mode == "cross":
                vectors = [self.encode(*zip(*chunk))]
            else:  # a bi-encoder: each sentence alone
                first, second = zip(*chunk)
                vectors = [self.encode(first), self.encode(second)]
            outputs.append(self.score(vectors))
        return torch.cat(outputs) if outputs else torch.zeros(0)
