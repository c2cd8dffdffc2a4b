"""Shared fixtures: the embedded checkpoint and tiny / bert-base-shaped random checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtbert_jax.synthetic import TINY_BERT

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded, ever
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# A command run as a subprocess: without the malloc re-exec, which would drop a test's hooks.
COMMAND_ENV = {**os.environ, "MTBERT_MALLOC_TUNABLES": "0"}

@pytest.fixture(autouse=True)
def _not_a_command_line():
    """A test that runs a command's main() in this process leaves it as it found it: marked as a
    command line, a later test's refused command would end the whole test process (exit 2)."""
    from mtbert_jax import errors

    marked = errors._command_line
    yield
    errors._command_line = marked


# The tiny encoder of mtbert_jax.synthetic with the bert-base-uncased vocabulary (real tokenizers).
TINY = {**TINY_BERT, "vocab_size": 30522}


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from mtbert_jax.checkpoints.hf import default_checkpoint_dir
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
    from mtbert_jax.data.task_files import DataError, resolve_data_dir
    try:
        path = resolve_data_dir()
    except DataError:
        pytest.skip("no task data: set MTBERT_DATA_DIR")
    if not path.is_dir():
        pytest.skip(f"{path}: no task data directory")
    return path


@pytest.fixture(scope="session")
def tokenizer(minilm_dir):
    from mtbert_jax.checkpoints.tokenizer import BertTextTokenizer
    return BertTextTokenizer(minilm_dir)


def write_tsv(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


SENTIMENT_WORDS = ["awful", "bad", "okay", "good", "great"]
OTHER_WORDS = ["car", "road", "tree", "bird", "cloud"]
TINY_WORDS = ["film", "movie", "plot", "actor", "scene", "music", "story", "city", "river", "house"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, minilm_dir) -> Path:
    """A 2-layer, hidden-32 BERT with the MiniLM vocabulary, as a Hugging Face directory."""
    import jax

    from mtbert_jax.checkpoints.hf import export_hf_checkpoint
    from mtbert_jax.model.encoder import init_params
    from mtbert_jax.synthetic import tiny_bert_config

    config = tiny_bert_config(vocab_size=TINY["vocab_size"])
    return export_hf_checkpoint(init_params(config, jax.random.PRNGKey(0)), config,
                                tmp_path_factory.mktemp("tiny") / "bert", tokenizer_dir=minilm_dir)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """Small synthetic task files with a learnable signal, in the course's formats."""
    import random

    root = tmp_path_factory.mktemp("tiny_data")
    rng = random.Random(0)

    def sentence(n=4):
        return " ".join(rng.choice(TINY_WORDS) for _ in range(n))

    for split, n in (("train", 48), ("dev", 24)):
        rows = ["\tid\tsentence\tsentiment"]
        for i in range(n):
            label = i % 5
            rows.append(f"{i}\tsst{split}{i}\t{SENTIMENT_WORDS[label]} {sentence(3)}\t{label}")
        write_tsv(root / f"ids-sst-{split}.csv", rows)
        rows = ["\tid\tsentence1\tsentence2\tis_duplicate"]
        for i in range(n):
            a = sentence()
            dup = i % 2
            b = a if dup else " ".join(rng.choice(OTHER_WORDS) for _ in range(4))
            rows.append(f"{i}\tq{split}{i}\t{a}?\t{b}?\t{float(dup)}")
        write_tsv(root / f"quora-{split}.csv", rows)
        rows = ["\tid\tsentence1\tsentence2\tsimilarity"]
        for i in range(n):
            words = sentence(5).split()
            keep = i % 6
            other = words[:keep] + sentence(5 - keep).split() if keep < 5 else words
            rows.append(f"{i}\ts{split}{i}\t{' '.join(words)}\t{' '.join(other)}\t{float(keep)}")
        write_tsv(root / f"sts-{split}.csv", rows)
    return root


def tiny_training_config(checkpoint: Path, data_dir: Path, cache_dir: Path, **changes):
    """configs/default.py shrunk to seconds per epoch."""
    from configs import default

    c = default.get_config()
    c.checkpoint, c.data_dir, c.cache_dir = str(checkpoint), str(data_dir), str(cache_dir)
    c.max_length, c.bucket_step, c.eval_batch_size = 32, 16, 16
    c.num_epochs, c.log_every_steps, c.checkpoint_every_steps = 3, 1, 4
    c.schedule.batch_size = 8
    c.optimizer.encoder_lr, c.optimizer.task_lr = 2e-3, 1e-2
    # A random tiny encoder learns slowly: mean pooling lets heads see the words from the
    # start, and a small STS weight keeps its large squared errors from drowning the others.
    c.model.pooling = "mean"
    c.loss_weights.sts = 0.1
    c.compute_dtype = "float32"  # the same numbers on every machine ("auto" follows the CPU)
    for dotted, value in changes.items():
        target = c
        *parents, leaf = dotted.split("__")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c


# Two tasks with quadratic losses over a shared part and a head each (tests of the combiners
# and of the weight average): at theta = 0 the shared gradients conflict.
A_TARGET = {"bert": np.array([1.0, 0.5, 0.0]), "heads_a": np.array([2.0, -1.0]), "heads_b": np.zeros(2)}
B_TARGET = {"bert": np.array([-1.0, 1.0, 0.2]), "heads_a": np.zeros(2), "heads_b": np.array([-3.0, 0.5])}


def quadratic_task_gradients():
    """Task t's loss 1/2 ||theta - t's target||^2 over the shared part and its own head: at
    theta = 0 the two shared gradients conflict (-a . -b = -0.5 < 0)."""
    def task(target, own):
        def loss(params):
            return sum(0.5 * jnp.sum(jnp.square(params[k]["w"] - target[k])) for k in ("bert", own))

        def gradient(params, teacher, batch, step, key):
            value, grad = jax.value_and_grad(loss)(params)
            return grad, value, jnp.ones(())
        return gradient
    return {"a": task(A_TARGET, "heads_a"), "b": task(B_TARGET, "heads_b")}
