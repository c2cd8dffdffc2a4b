"""Shared fixtures: the embedded checkpoint and tiny / bert-base-shaped random checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded, ever
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from mtbert_jax.hf_checkpoint import default_checkpoint_dir
    return default_checkpoint_dir()


def save_torch_bert(directory: Path, model_class: str = "BertModel", seed: int = 0,
                    safetensors: bool = True, tokenizer_from: Path | None = None, **config) -> Path:
    """Saves a randomly initialised transformers model (BertConfig defaults + `config`)."""
    import shutil

    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.BertConfig(**config)
    model = getattr(transformers, model_class)(cfg).eval()
    directory.mkdir(parents=True, exist_ok=True)
    if safetensors:
        model.save_pretrained(str(directory), safe_serialization=True)
    else:
        cfg.save_pretrained(str(directory))
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    if tokenizer_from is not None:
        shutil.copyfile(tokenizer_from / "vocab.txt", directory / "vocab.txt")
    return directory


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real task files: $MTBERT_DATA_DIR, else ../shared/data beside the project."""
    from mtbert_jax.task_files import TaskFileError, resolve_data_dir
    try:
        path = resolve_data_dir()
    except TaskFileError:
        pytest.skip("no task data: set MTBERT_DATA_DIR")
    if not path.is_dir():
        pytest.skip(f"{path}: no task data directory")
    return path


@pytest.fixture(scope="session")
def tokenizer(minilm_dir):
    from mtbert_jax.tokenizer import BertTextTokenizer
    return BertTextTokenizer(minilm_dir)


def write_tsv(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path
