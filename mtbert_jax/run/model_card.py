"""The README.md model card of each task directory convert.py exports (run/task_export.py).

A card says what someone who finds the directory alone needs: the task and what its outputs
mean, the run's dev metrics at the exported step, the command that trains it again, the base
checkpoint and its licence, how to load it, and how closely convert.py found it to reproduce
the run's predictions. The YAML front matter is Hugging Face's model-card metadata, so that
the directory can be pushed to the Hub as it is.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from mtbert_jax.checkpoints.task_models import (
    CLASS_NAMES,
    ENCODER_AND_HEAD,
    SENTENCE_TRANSFORMER,
    SEQUENCE_CLASSIFICATION,
)
from mtbert_jax.model.bert_config import BertConfig
from mtbert_jax.run import atomic
from mtbert_jax.run.config import RunConfig, dotted_leaves
from mtbert_jax.tasks import BINARY, MULTICLASS, TASKS

if TYPE_CHECKING:  # task_export writes the cards: imported for the annotation only
    from mtbert_jax.run.task_export import TaskExport

# The checkpoints this project names (run config `checkpoint`): their Hugging Face id and licence.
KNOWN_BASES = {"default": ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0", "Apache-2.0"),
               "": ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0", "Apache-2.0"),
               "all-mpnet-base-v2": ("sentence-transformers/all-mpnet-base-v2", "apache-2.0", "Apache-2.0")}
TASK_TITLES = {"sst": "SST-5 sentiment (Stanford Sentiment Treebank, five classes) of one sentence",
               "cfimdb": "CFIMDB sentiment (negative / positive) of one movie review",
               "quora": "Quora question pairs: are the two questions paraphrases of each other",
               "sts": "STS semantic textual similarity of two sentences"}


def outputs_meaning(task: str) -> str:
    """What the head's output stands for: classes with their names, the logit, the score range."""
    spec = TASKS[task]
    if spec.kind is MULTICLASS:
        names = CLASS_NAMES.get(task, ())
        classes = ", ".join(f"{i} {n}" if names else str(i) for i, n in enumerate(names or range(spec.num_classes)))
        return f"{spec.num_classes} class logits (softmax for probabilities); classes: {classes}"
    if spec.kind is BINARY:
        return (f"one logit; its sigmoid is the probability of {spec.label_column} = 1 (a paraphrase); "
                "labels 0 (not a paraphrase) and 1 (a paraphrase), predicted 1 where the logit is > 0")
    low, high = spec.score_range
    return f"a similarity score on the labels' {low:g}-{high:g} scale ({low:g}: unrelated, {high:g}: equivalent), not clipped"


def recorded_dev_metrics(workdir: Path, step: int, symmetric_pairs: bool = False) -> tuple[Optional[dict], str]:
    """({task: metrics, ..., "overall": score}, where they were read) for the checkpoint at
    `step`: evaluate.py's eval/metrics.json of this run at that step (pairs scored as the run
    scores them, `symmetric_pairs`), else the training log's dev record of that step; (None,
    why) when neither holds them."""
    try:
        evaluated = json.loads((workdir / "eval" / "metrics.json").read_text())
        if evaluated.get("step") == step and isinstance(evaluated.get("workdir"), str) and evaluated.get("dev") \
                and evaluated.get("symmetric_pairs") == symmetric_pairs:
            return evaluated["dev"], f"evaluate.py's {workdir / 'eval' / 'metrics.json'}"
    except (OSError, ValueError, AttributeError):
        pass  # no evaluation, or not of this run: the training log's record
    log = workdir / "metrics.jsonl"
    try:  # the log's complete lines (a last line cut by a kill is left out)
        records = [json.loads(line) for line in atomic.json_lines(log.read_text())]
    except FileNotFoundError:
        return None, f"the run has no training log {log}"
    except OSError as e:
        return None, f"{log} cannot be read ({e.strerror or e})"
    except ValueError as e:
        return None, f"{log} is not a metrics log ({e})"
    found = next(({**r["dev"], "overall": r.get("dev_overall")} for r in reversed(records)
                  if isinstance(r, dict) and r.get("step") == step and "dev" in r), None)
    if found is None:
        return None, f"{log} holds no dev record of step {step}"
    return found, f"the training log {log}, the dev record of step {step}"


def _flag(key: str, value) -> list[str]:
    """--config.KEY=VALUE as ml_collections parses it back: a tuple once per value."""
    if isinstance(value, (list, tuple)):
        return [f"--config.{key}={shlex.quote(str(v))}" for v in value] or [f"--config.{key}='()'"]
    return [f"--config.{key}={shlex.quote(str(value))}"]


def training_command(run: RunConfig, workdir: str | Path, default: Optional[dict]) -> str:
    """train.py's command for `run`: configs/default.py and a flag for each value that differs
    from `default` (configs/default.py as a RunConfig dict; None: not in this checkout)."""
    base = f"python train.py --config configs/default.py --workdir {shlex.quote(str(workdir))}"
    if default is None:
        return base + "  # and the values of the run's config.json that differ from configs/default.py"
    mine, theirs = dotted_leaves(dataclasses.asdict(run)), dotted_leaves(default)
    same = lambda k: json.dumps(mine.get(k), default=str) == json.dumps(theirs.get(k), default=str)  # noqa: E731
    flags = [f for k in sorted(mine) if not same(k) for f in _flag(k, mine[k])]
    return " \\\n    ".join([base, *flags])


def _loading(task: str, kind: str, directory: str) -> tuple[str, str]:
    """(the class that loads the directory, three lines of Python that use it)."""
    pair = TASKS[task].is_pair
    example = '[("A man plays a guitar.", "A man plays music.")]' if pair else '["A lovely film."]'
    shape = "[n]" if pair else f"[n, {TASKS[task].num_outputs}]"
    d = json.dumps(directory)
    if kind == SEQUENCE_CLASSIFICATION and pair:
        return "CrossEncoder (sentence-transformers), or AutoModelForSequenceClassification", (
            f"from sentence_transformers import CrossEncoder\nmodel = CrossEncoder({d})\n"
            f"outputs = model.predict({example})  # {shape}")
    if kind == SEQUENCE_CLASSIFICATION:
        return "AutoModelForSequenceClassification (transformers)", (
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
            f"model, tokenizer = AutoModelForSequenceClassification.from_pretrained({d}), "
            f"AutoTokenizer.from_pretrained({d})\n"
            f'logits = model(**tokenizer({example}, truncation=True, return_tensors="pt")).logits  # {shape}')
    if kind == SENTENCE_TRANSFORMER:
        return "SentenceTransformer (sentence-transformers" + ("; a (sentence1, sentence2) tuple is one input)"
                                                              if pair else ")"), (
            f"from sentence_transformers import SentenceTransformer\nmodel = SentenceTransformer({d})\n"
            f"outputs = model.encode({example}){'[:, 0]' if pair else ''}  # {shape}")
    assert kind == ENCODER_AND_HEAD, kind
    return "TaskModel (mtbert_jax/checkpoints/torch_task_model.py: torch, transformers and safetensors only; copy it)", (
        f"from mtbert_jax.checkpoints.torch_task_model import TaskModel\nmodel = TaskModel({d})\n"
        f"outputs = model.predict({example})  # {shape}")


def model_card(run: RunConfig, task: str, export: "TaskExport", workdir: str | Path, which: str, step: int,
               dev: Optional[dict], dev_source: str, default: Optional[dict], notes: Sequence[str] = (),
               encoder: Optional[BertConfig] = None) -> str:
    """The README.md of `task`'s exported directory. `export`: its run/task_export.TaskExport;
    `dev`, `dev_source`: recorded_dev_metrics of the exported step; `default`: configs/default.py
    as a RunConfig dict (None: not in this checkout); `notes`: convert's notes on the run;
    `encoder`: the encoder's BertConfig, for its architecture and size."""
    hub_id, licence_tag, licence = KNOWN_BASES.get(run.checkpoint, (None, None, None))
    base_name = hub_id.split("/")[1] if hub_id else Path(str(run.checkpoint)).name
    library = {SENTENCE_TRANSFORMER: "sentence-transformers", SEQUENCE_CLASSIFICATION: "transformers"}.get(export.format)
    kind_tag = "sentence-transformers" if export.format == SENTENCE_TRANSFORMER else "text-classification"
    front = ["---", *([f"license: {licence_tag}"] if licence_tag else []), *([f"base_model: {hub_id}"] if hub_id else []),
             *([f"library_name: {library}"] if library else []), "tags:", "- mtbert-jax", f"- {task}", f"- {kind_tag}",
             "---"]
    loader, code = _loading(task, export.format, str(export.directory))
    checkpoint = f"its {which} checkpoint (step {step})" if which in ("best", "latest") else f"the checkpoint of step {step}"

    if dev is None:
        metrics = [f"Not recorded: {dev_source}. `python evaluate.py --workdir {shlex.quote(str(workdir))}` scores it."]
    else:
        own = {k: v for k, v in (dev.get(task) or {}).items() if isinstance(v, (int, float))}
        metrics = ["| metric | dev |", "|---|---|"] + [f"| {task} {k} | {v:.4f} |" for k, v in own.items()]
        if isinstance(dev.get("overall"), (int, float)):
            metrics.append(f"| the run's overall score (all its tasks) | {dev['overall']:.4f} |")
        metrics.append(f"\nFrom {dev_source}.")
    if export.unchecked:
        check = (f"convert.py read every tensor back equal; the outputs were not compared in PyTorch "
                 f"({export.unchecked}).")
    else:
        check = (f"convert.py loaded this directory with the class above and compared its outputs on fixed "
                 f"{'pairs' if TASKS[task].is_pair else 'sentences'} (one longer than max_length) with the run's "
                 f"float32 predictions: max abs difference {export.difference:.2g} (accepted: up to 1e-4).")
    base = (f"{base_name} ([{hub_id}](https://huggingface.co/{hub_id})), licence {licence}" if hub_id
            else f"`{run.checkpoint}`: see the base checkpoint's own licence")
    lines = [
        *front, "",
        f"# {task}: fine-tuned from {base_name} with mtbert-jax", "",
        f"- Task: {TASK_TITLES.get(task, task)}.",
        f"- Outputs: {outputs_meaning(task)}.",
        f"- Exported: run `{workdir}`, {checkpoint}; inputs cut to max_length "
        f"{run.max_length} tokens as in training{', the longer sentence of a pair first' if TASKS[task].is_pair else ''}.",
        f"- Written as: {export.name or export.format}" + (f" ({export.why})" if export.why else "")
        + (f"; encoder: {encoder.family.architecture}, {encoder.num_hidden_layers} layers, hidden "
           f"{encoder.hidden_size}." if encoder else "."),
        f"- Base checkpoint: {base}.", "",
        "## Dev metrics", "", *metrics, "",
        "## Training", "", "```bash", training_command(run, workdir, default), "```", "",
        "## Loading", "", f"Class: {loader}.", "", "```python", code, "```", "",
        "## Check", "", check, "",
    ]
    if notes:
        lines += ["## Notes", "", *[f"- {n[:1].upper()}{n[1:]}." for n in notes], ""]
    return "\n".join(lines)
