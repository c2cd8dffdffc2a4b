"""convert.py's task models: each task of a trained run written as a directory that PyTorch code
loads (checkpoints/task_models.py picks the class), read back, and checked against the run's own
predictions before anything is reported written.

The check compares, on a few fixed sentences and pairs (one longer than any max_length, so that
truncation is compared too), what PyTorch computes from the written directory with what
`evaluation.predict.predict` returns for the run, to 1e-4. The run is predicted in float32: a
bfloat16 run's evaluate.py predictions differ from float32 by bfloat16's rounding, which is no
property of the export. Pair tasks are compared in the order given: a run with
model.symmetric_pairs averages both orders, which no stock class does (average the outputs of
the pair and of its swap for that score).
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mtbert_jax.checkpoints.hf import resolve_checkpoint_dir
from mtbert_jax.checkpoints.task_models import (
    ENCODER_AND_HEAD,
    SENTENCE_TRANSFORMER,
    SEQUENCE_CLASSIFICATION,
    WrittenTaskModel,
    format_name,
    read_back_difference,
    task_model_format,
    write_task_model,
)
from mtbert_jax.errors import CheckpointError, first_line
from mtbert_jax.model.bert_config import BertConfig
from mtbert_jax.run.build import build_model, encoder_config
from mtbert_jax.run.compare import default_config
from mtbert_jax.run.evaluate import predict_records, text_records
from mtbert_jax.run.model_card import model_card, recorded_dev_metrics
from mtbert_jax.run.trained import TrainedModel, load_trained
from mtbert_jax.tasks import TASKS

TOLERANCE = 1e-4  # largest absolute difference accepted between PyTorch's outputs and the run's
_LONG = " ".join(["the film's plot moves slowly but the actors and the music keep it alive"] * 40)
PROBE_SENTENCES = ("It's a lovely film with lovely performances by Buy and Accorsi.",
                   "No one goes unindicted here, which is probably for the best.",
                   "awful", _LONG)
PROBE_PAIRS = (("Why do I fall asleep when sitting?", "Why do I keep falling asleep?"),
               ("Two black dogs are playing on the grass.", "Two black dogs are playing in a grassy plain."),
               ("A man is playing a guitar.", "A woman is slicing an onion."),
               (_LONG, "How do actors keep a slow film alive?"))
# How each format is loaded for the check: the stock class a user would load it with.
LOADED_WITH = {SEQUENCE_CLASSIFICATION: "transformers.AutoModelForSequenceClassification",
               SENTENCE_TRANSFORMER: "sentence_transformers.SentenceTransformer",
               ENCODER_AND_HEAD: "mtbert_jax.checkpoints.torch_task_model.TaskModel"}


@dataclasses.dataclass
class TaskExport:
    task: str
    format: str
    why: str  # why no stock class fits ("" when one does)
    directory: Path
    difference: Optional[float]  # PyTorch against the run, None when not checked
    unchecked: str  # why the outputs were not checked in PyTorch ("" when they were)
    name: str = ""  # the format as the encoder's family calls it (MPNetForSequenceClassification); "": `format`

    def summary(self) -> str:
        said = f"{self.task}: {self.name or self.format} in {self.directory}"
        if self.why:
            said += f" ({self.why}; mtbert_jax/checkpoints/torch_task_model.py computes it)"
        if self.unchecked:
            return f"{said}; tensors read back equal, outputs not checked in PyTorch ({self.unchecked})"
        return f"{said}; outputs equal the run's float32 predictions within {self.difference:.1g}"


def probe_items(task: str) -> list[tuple[str, ...]]:
    return [(s,) for s in PROBE_SENTENCES] if not TASKS[task].is_pair else [tuple(p) for p in PROBE_PAIRS]


def in_float32(trained: TrainedModel) -> TrainedModel:
    """The run with its compute dtype forced to float32: the forward an export reproduces."""
    if trained.run.compute_dtype == "float32":
        return trained
    run = dataclasses.replace(trained.run, compute_dtype="float32")
    source = resolve_checkpoint_dir(run.checkpoint)
    bert_config = encoder_config(run, BertConfig.from_json_file(source / "config.json"))
    return TrainedModel(run, build_model(run, bert_config), trained.params, trained.tokenizer, trained.step)


def run_outputs(trained: TrainedModel, task: str, items: Sequence[tuple[str, ...]]) -> np.ndarray:
    """The run's head outputs for sentences ((s,)) or pairs ((a, b)) in the order given (what a
    stock class computes): what evaluate.py predicts for them with model.symmetric_pairs off."""
    return predict_records(trained, text_records(task, items), len(items), symmetric_pairs=False)


@contextlib.contextmanager
def _quiet_transformers():
    """No progress bars or load reports from transformers while the check loads a directory."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def pytorch_outputs(written: WrittenTaskModel, items: Sequence[tuple[str, ...]]) -> np.ndarray:
    """What the stock class (or torch_task_model.py) computes from the written directory:
    [n, classes] class logits, [n] for a pair task's one output. ImportError when the library
    that loads the format is not installed."""
    import torch

    directory, pair = str(written.directory), TASKS[written.task].is_pair
    with _quiet_transformers(), torch.inference_mode():
        if written.format == SEQUENCE_CLASSIFICATION:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            model = AutoModelForSequenceClassification.from_pretrained(directory, local_files_only=True).eval()
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
            columns = [list(c) for c in zip(*items)]
            batch = tokenizer(*columns, padding=True, truncation=True, return_tensors="pt")
            out = model(**batch).logits.float().numpy()
        elif written.format == SENTENCE_TRANSFORMER:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(directory, device="cpu", local_files_only=True)
            out = model.encode([tuple(i) if pair else i[0] for i in items], convert_to_numpy=True)
        else:
            from mtbert_jax.checkpoints.torch_task_model import TaskModel

            return TaskModel(directory).predict([tuple(i) if pair else i[0] for i in items]).float().numpy()
    return out[:, 0] if pair else out


def export_task_model(trained: TrainedModel, task: str, directory: Path, final: Optional[Path] = None) -> TaskExport:
    """Writes one task's model to `directory`, reads its tensors back, and checks its outputs in
    PyTorch where torch (and the format's library) is installed. CheckpointError when either
    differs, naming `final` (where the directory will be renamed to; default `directory`)."""
    final = final or directory
    kind, why = task_model_format(trained.run.model, task)
    source = resolve_checkpoint_dir(trained.run.checkpoint)
    bert_config = BertConfig.from_json_file(source / "config.json")
    name = format_name(kind, bert_config.family)
    written = write_task_model(directory, trained.params, bert_config, trained.run.model, task, source,
                               trained.run.max_length)
    difference = read_back_difference(written)
    if difference != 0:
        raise CheckpointError(f"{final}: the {task} model's tensors read back differently (max abs "
                              f"difference {difference:g}); nothing was written")
    items = probe_items(task)
    try:
        got = pytorch_outputs(written, items)
    except ImportError as e:
        return TaskExport(task, kind, why, final, None, f"{e.name or e} is not installed", name)
    except Exception as e:  # noqa: BLE001  whatever the library raises on a directory it cannot load
        raise CheckpointError(f"{final}: {LOADED_WITH[kind]} cannot load the {task} model it is written for "
                              f"({first_line(e)}); nothing was written") from None
    expected = run_outputs(trained, task, items).astype(np.float32)
    difference = float(np.max(np.abs(got - expected), initial=0.0)) if got.shape == expected.shape else float("inf")
    if not difference <= TOLERANCE:  # NaN included
        raise CheckpointError(f"{final}: {LOADED_WITH[kind]} computes {task} outputs that differ from the "
                              f"run's by up to {difference:g} (more than {TOLERANCE:g}); nothing was written")
    return TaskExport(task, kind, why, final, difference, "", name)


def export_task_models(workdir: str | Path, which: str, out_dir: str | Path, final_dir: Optional[Path] = None,
                       ) -> tuple[list[TaskExport], list[str]]:
    """Every task of the run at `workdir` (checkpoint `which`) under out_dir/<task>/, checked,
    with its README.md model card (run/model_card.py): (what was written, notes on how the run's
    predictions relate to the exports). `final_dir`: where out_dir will be renamed to, for
    messages and the cards' paths."""
    trained = load_trained(workdir, which)
    notes = []
    if trained.run.compute_dtype != "float32":
        notes.append(f"the run computes in {trained.run.compute_dtype}: the exports are float32, checked "
                     "against its float32 forward (its evaluate.py predictions differ by bf16's rounding)")
    if trained.run.model.symmetric_pairs:
        notes.append("the run averages both orders of a pair (model.symmetric_pairs): the exports score a pair as "
                     "given; average the outputs of (a, b) and (b, a) for the run's prediction")
    final_dir = Path(final_dir or out_dir)
    checked = in_float32(trained)
    exports = [export_task_model(checked, task, Path(out_dir) / task, final_dir / task) for task in checked.run.model.tasks]
    # The cards describe the run as trained (its own dtype), not the float32 forward checked above.
    dev, dev_source = recorded_dev_metrics(Path(workdir), trained.step, trained.run.model.symmetric_pairs)
    default = default_config()
    for export in exports:
        card = model_card(trained.run, export.task, export, workdir, which, trained.step, dev, dev_source, default,
                          notes, trained.model.bert_config)
        (Path(out_dir) / export.task / "README.md").write_text(card, encoding="utf-8")
    return exports, notes
