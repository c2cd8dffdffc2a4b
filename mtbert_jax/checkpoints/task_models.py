"""One task of a trained run as a directory that PyTorch code loads: which stock class computes
the task's head, and the files that class reads.

At prediction time (no dropout) a head is its pooling and its linear layers
(model/multitask.py, model/heads.py), so the class follows from those:
- BERT's pooler (tanh dense on [CLS]) then one linear layer: a single-sentence task, or a
  cross-encoder pair head without the shared pair layer, under `model.pooling = "pooler"`. That
  is transformers' BertForSequenceClassification exactly (for MPNet, MPNetForSequenceClassification,
  whose head is the same tanh dense then linear layer on <s>). Its config.json also tells
  sentence-transformers' CrossEncoder to apply no activation, so that CrossEncoder.predict
  returns the head's output itself: Quora's logit (not its sigmoid) and STS's score (which the
  cross head neither scales nor squashes).
- Mean, [CLS] or max pooling of one sequence, then the linear layers: a sentence-transformers
  directory, Transformer -> Pooling -> Dense (identity), whose encode() of a (sentence1,
  sentence2) tuple cross-encodes the pair as the run does. The shared pair layer is one more
  Dense (GELU), and the pooler under it a Dense (tanh) after Pooling("cls").
- Bi-encoder pair heads (the two sentences encoded apart, then combined) and task adapters
  (which change the encoder inside): no stock class computes them. The shared encoder as a
  BertModel (MPNetModel) directory, the task's own tensors (head, shared pair layer, adapters) in
  head.safetensors and what they mean in head.json, for `torch_task_model.py`, a PyTorch module
  that a user can copy.

Every directory holds the encoder, named and configured as its family's (model/families.py), the
tokenizer files (with the run's max_length as the length they truncate to) and float32 tensors.
The task's own tensors keep BERT's names in every family. Written tensors are kept in `WrittenTaskModel`
so that the caller can read them back and compare.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Mapping

import jax
import numpy as np
from flax import traverse_util

from mtbert_jax.checkpoints.hf import SAFETENSORS, TOKENIZER_FILES, hf_name
from mtbert_jax.errors import CheckpointError
from mtbert_jax.model.bert_config import BertConfig
from mtbert_jax.model.config import ModelConfig
from mtbert_jax.model.families import BERT, EncoderFamily
from mtbert_jax.tasks import MULTICLASS, REGRESSION, TASKS

SEQUENCE_CLASSIFICATION = "BertForSequenceClassification"
SENTENCE_TRANSFORMER = "SentenceTransformer"
ENCODER_AND_HEAD = "BertModel + head.safetensors"

HEAD_TENSORS = "head.safetensors"
HEAD_CONFIG = "head.json"
# The course's class names (SST-5's five classes, CFIMDB's two); pair tasks name their output.
CLASS_NAMES = {"sst": ("very negative", "negative", "neutral", "positive", "very positive"),
               "cfimdb": ("negative", "positive")}
# The activations after a Dense, by the torch classes sentence-transformers instantiates.
_IDENTITY = "torch.nn.modules.linear.Identity"
_TANH = "torch.nn.modules.activation.Tanh"  # BERT's pooler
_GELU = "torch.nn.modules.activation.GELU"  # GELU(): the exact erf form, as model/encoder.py's gelu


def format_name(kind: str, family: EncoderFamily) -> str:
    """What a format is called for an encoder of `family`: the transformers class it loads in."""
    return {SEQUENCE_CLASSIFICATION: family.sequence_classification,
            ENCODER_AND_HEAD: f"{family.architecture} + {HEAD_TENSORS}"}.get(kind, kind)


def task_model_format(config: ModelConfig, task: str) -> tuple[str, str]:
    """(the format `task`'s head is written in, why no stock class fits it: "" when one does)."""
    if config.adapter != "none":
        return ENCODER_AND_HEAD, f"the {config.adapter} adapters change the encoder inside, which no stock class does"
    if TASKS[task].is_pair and config.pair_head(task) != "cross":
        return ENCODER_AND_HEAD, (f"the {config.pair_head(task)} pair head encodes the two sentences apart, "
                                  "which no stock class does")
    shared_layer = TASKS[task].is_pair and config.shared_pair_hidden
    if config.pooling == "pooler" and not shared_layer:
        return SEQUENCE_CLASSIFICATION, ""
    return SENTENCE_TRANSFORMER, ""


@dataclasses.dataclass
class Dense:
    """One linear layer in torch.nn.Linear's layout, and the torch activation class after it."""

    weight: np.ndarray  # [out, in]
    bias: np.ndarray  # [out]
    activation: str


@dataclasses.dataclass
class WrittenTaskModel:
    task: str
    format: str
    directory: Path
    why: str  # why no stock class fits ("" when one does)
    tensors: dict[str, dict[str, np.ndarray]]  # safetensors file (relative) -> tensor name -> what was written


def _dense(params: Mapping, activation: str) -> Dense:
    """A flax Dense's parameters ({kernel [in, out], bias}) as a torch Linear's."""
    return Dense(np.asarray(params["kernel"], np.float32).T.copy(), np.asarray(params["bias"], np.float32), activation)


def head_layers(params: Mapping, config: ModelConfig, task: str, pooler_included: bool) -> list[Dense]:
    """The linear layers after the pooling, in order. `pooler_included`: the pooler is part of
    the encoder class (BertForSequenceClassification), else it is a Dense (tanh) of its own."""
    layers = []
    if config.pooling == "pooler" and not pooler_included:
        layers.append(_dense(params["bert"]["pooler"]["dense"], _TANH))
    if TASKS[task].is_pair and config.shared_pair_hidden:
        layers.append(_dense(params["pair_hidden"], _GELU))
    layers.append(_dense(params[f"heads_{task}"]["dense"], _IDENTITY))
    return layers


def _torch_tensors(tree: Mapping, prefix: str = "", family: EncoderFamily = BERT) -> dict[str, np.ndarray]:
    """A flax parameter tree as PyTorch's named tensors: `prefix` + hf_name in `family`'s names
    (the encoder's family for the encoder, BERT's for a task's own tensors), [out, in] weights."""
    flat = traverse_util.flatten_dict(jax.device_get(dict(tree)))
    return {prefix + hf_name(path, family): np.ascontiguousarray(
        (np.asarray(v, np.float32).T if path[-1] == "kernel" else np.asarray(v, np.float32))) for path, v in flat.items()}


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def _save(path: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def _copy_tokenizer(tokenizer_dir: Path, directory: Path, max_length: int) -> None:
    """The checkpoint's tokenizer files, set to truncate where the run did: `truncation=True`
    (which CrossEncoder, SentenceTransformer and pipelines pass) cuts at `max_length` tokens,
    the longer sentence of a pair first, as the run's tokenizer does."""
    if not any((tokenizer_dir / name).exists() for name in ("vocab.txt", "tokenizer.json")):
        raise CheckpointError(f"{tokenizer_dir}: no tokenizer files (vocab.txt or tokenizer.json) to export with the model")
    directory.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copyfile(tokenizer_dir / name, directory / name)
    path = directory / "tokenizer_config.json"
    settings = json.loads(path.read_text()) if path.exists() else {}
    _write_json(path, {**settings, "model_max_length": max_length})


def _encoder_directory(directory: Path, bert_params: Mapping, bert_config: BertConfig, tokenizer_dir: Path,
                       max_length: int) -> dict[str, np.ndarray]:
    """A BertModel (MPNetModel) directory (config.json, model.safetensors, tokenizer); returns the tensors."""
    _copy_tokenizer(tokenizer_dir, directory, max_length)
    _write_json(directory / "config.json", bert_config.to_hf_dict())
    tensors = _torch_tensors(bert_params, family=bert_config.family)
    _save(directory / SAFETENSORS, tensors)
    return tensors


def _label_config(task: str) -> dict:
    spec = TASKS[task]
    names = CLASS_NAMES.get(task) or tuple(f"LABEL_{i}" for i in range(spec.num_outputs))
    if spec.kind is not MULTICLASS:
        names = (spec.label_column,)  # the one output: Quora's is_duplicate logit, STS's similarity score
    # problem_type: the loss transformers would train on further, the run's own (softmax
    # cross-entropy; a sigmoid on Quora's one logit; squared error on the STS score).
    problem = {MULTICLASS: "single_label_classification", REGRESSION: "regression"}.get(
        spec.kind, "multi_label_classification")
    return {"id2label": {str(i): n for i, n in enumerate(names)}, "label2id": {n: i for i, n in enumerate(names)},
            "problem_type": problem}


def _write_sequence_classification(directory: Path, params: Mapping, bert_config: BertConfig, config: ModelConfig,
                                   task: str, tokenizer_dir: Path, max_length: int) -> dict:
    _copy_tokenizer(tokenizer_dir, directory, max_length)
    family = bert_config.family
    (head,) = head_layers(params, config, task, pooler_included=True)
    pooler = _dense(params["bert"]["pooler"]["dense"], _TANH)
    # The encoder under the class's prefix; the pooler and the head where the class keeps them
    # (BERT: bert.pooler.dense and classifier; MPNet: classifier.dense and classifier.out_proj).
    encoder = {k: v for k, v in params["bert"].items() if k != "pooler"}
    tensors = _torch_tensors(encoder, prefix=family.base_prefix, family=family)
    for name, layer in ((family.classifier_pooler, pooler), (family.classifier_head, head)):
        tensors |= {f"{name}.weight": layer.weight, f"{name}.bias": layer.bias}
    _save(directory / SAFETENSORS, tensors)
    hf = bert_config.to_hf_dict() | {"architectures": [family.sequence_classification]} | _label_config(task)
    if TASKS[task].is_pair:
        # CrossEncoder's activation on the logits; its default for one output is a sigmoid.
        # sentence-transformers 4+ reads the first key, earlier versions the second.
        hf |= {"sentence_transformers": {"activation_fn": _IDENTITY},
               "sbert_ce_default_activation_function": _IDENTITY}
    _write_json(directory / "config.json", hf)
    return {SAFETENSORS: tensors}


# sentence-transformers' module names as its 2.x releases wrote them; every later release
# (6.3 included) still loads them.
_ST_MODULES = {"Transformer": "sentence_transformers.models.Transformer",
               "Pooling": "sentence_transformers.models.Pooling", "Dense": "sentence_transformers.models.Dense"}


def _write_sentence_transformer(directory: Path, params: Mapping, bert_config: BertConfig, config: ModelConfig,
                                task: str, tokenizer_dir: Path, max_length: int) -> dict:
    written = {SAFETENSORS: _encoder_directory(directory, params["bert"], bert_config, tokenizer_dir, max_length)}
    _write_json(directory / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})
    _write_json(directory / "config_sentence_transformers.json", {"prompts": {}, "default_prompt_name": None})
    pooling = "cls" if config.pooling == "pooler" else config.pooling
    modules = [{"idx": 0, "name": "0", "path": "", "type": _ST_MODULES["Transformer"]},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": _ST_MODULES["Pooling"]}]
    _write_json(directory / "1_Pooling" / "config.json", {
        "word_embedding_dimension": bert_config.hidden_size,
        **{f"pooling_mode_{mode}": pooling == short for mode, short in
           (("cls_token", "cls"), ("mean_tokens", "mean"), ("max_tokens", "max"))},
        "pooling_mode_mean_sqrt_len_tokens": False})
    for index, layer in enumerate(head_layers(params, config, task, pooler_included=False), start=2):
        folder = f"{index}_Dense"
        modules.append({"idx": index, "name": str(index), "path": folder, "type": _ST_MODULES["Dense"]})
        _write_json(directory / folder / "config.json", {
            "in_features": int(layer.weight.shape[1]), "out_features": int(layer.weight.shape[0]), "bias": True,
            "activation_function": layer.activation})
        written[f"{folder}/{SAFETENSORS}"] = {"linear.weight": layer.weight, "linear.bias": layer.bias}
        _save(directory / folder / SAFETENSORS, written[f"{folder}/{SAFETENSORS}"])
    _write_json(directory / "modules.json", modules)
    return written


def _write_encoder_and_head(directory: Path, params: Mapping, bert_config: BertConfig, config: ModelConfig,
                            task: str, tokenizer_dir: Path, max_length: int) -> dict:
    written = {SAFETENSORS: _encoder_directory(directory, params["bert"], bert_config, tokenizer_dir, max_length)}
    spec = TASKS[task]
    # The task's own tensors by their flax paths, as hf_name writes them: head.weight (bi_cosine
    # has none), pair_hidden.weight, adapters.down.weight, adapters.attention_0.query.weight (the
    # first adapted layer's PAL attention), adapters.low_rank_5.up.weight,
    # adapters.top_layer.attention.self.query.weight (a BertLayer's names).
    head = (_torch_tensors(params.get(f"heads_{task}", {}).get("dense", {}), "head.")
            | _torch_tensors(params["pair_hidden"] if spec.is_pair and config.shared_pair_hidden else {}, "pair_hidden.")
            | _torch_tensors(params.get(f"adapters_{task}", {}), "adapters."))
    if head:
        written[HEAD_TENSORS] = head
        _save(directory / HEAD_TENSORS, head)
    layers = config.adapter_layer_indices(bert_config.num_hidden_layers) if config.adapter != "none" else ()
    _write_json(directory / HEAD_CONFIG, {
        "task": task, "output": {MULTICLASS: "class logits", REGRESSION: "score"}.get(spec.kind, "logit"),
        "regression": spec.kind is REGRESSION, "pooling": config.pooling,
        "pair_head": config.pair_head(task) if spec.is_pair else None, "max_length": max_length,
        "adapter": config.adapter, "adapter_layers": list(layers), "adapter_heads": config.adapter_heads})
    return written


_WRITERS = {SEQUENCE_CLASSIFICATION: _write_sequence_classification,
            SENTENCE_TRANSFORMER: _write_sentence_transformer, ENCODER_AND_HEAD: _write_encoder_and_head}


def write_task_model(directory: str | Path, params: Mapping, bert_config: BertConfig, config: ModelConfig,
                     task: str, tokenizer_dir: str | Path, max_length: int) -> WrittenTaskModel:
    """Writes `task`'s model (the run's parameters `params`: bert/, heads_{task}/, ...) to
    `directory` in the format `task_model_format` picks."""
    kind, why = task_model_format(config, task)
    directory = Path(directory)
    params = jax.device_get(dict(params))
    tensors = _WRITERS[kind](directory, params, bert_config.replace(compute_dtype="float32"), config, task,
                             Path(tokenizer_dir), max_length)
    return WrittenTaskModel(task, kind, directory, why, tensors)


def read_back_difference(written: WrittenTaskModel) -> float:
    """The largest absolute difference between the tensors written and those the files hold;
    inf when a tensor is missing, extra, of another shape, or NaN."""
    from safetensors.numpy import load_file

    worst = 0.0
    for file, expected in written.tensors.items():
        found = load_file(str(written.directory / file))
        if found.keys() != expected.keys():
            return float("inf")
        for name, value in expected.items():
            if found[name].shape != value.shape:
                return float("inf")
            difference = float(np.max(np.abs(found[name].astype(np.float64) - value), initial=0.0))
            if not np.isfinite(difference):
                return float("inf")
            worst = max(worst, difference)
    return worst
