"""Command line: convert a Hugging Face BERT directory and write it back as one.

    python convert.py --checkpoint DIR --out DIR

`--checkpoint default` is the embedded all-MiniLM-L6-v2; a training workdir (runs/NAME, with
`--which best|latest|STEP`) exports its fine-tuned encoder. The output is config.json,
model.safetensors and the tokenizer files; it is read back and compared with the parameters
before the command reports success.

A training workdir also gets a directory per task, DIR/<task>/, that PyTorch code loads: a
BertForSequenceClassification (pooler heads), a sentence-transformers model (other poolings) or,
for heads no stock class computes, the encoder with head.safetensors for
mtbert_jax/checkpoints/torch_task_model.py (run/task_export.py). Each is read back and its
outputs compared with the run's predictions; `--encoder-only` skips them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

from mtbert_jax.checkpoints.hf import export_hf_checkpoint, load_hf_checkpoint, resolve_checkpoint_dir
from mtbert_jax.errors import CheckpointError
from mtbert_jax.model.bert_config import BertConfig
from mtbert_jax.run import atomic
from mtbert_jax.run.checkpointing import restore_trained


def _max_difference(a, b) -> float:
    """The largest absolute difference over all tensors; inf when the trees differ or any
    difference is NaN (Python's max would pass over a NaN)."""
    fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    if fa.keys() != fb.keys():
        return float("inf")
    differences = [float(np.max(np.abs(np.asarray(fa[k]) - np.asarray(fb[k])), initial=0.0)) for k in fa]
    return float("inf") if any(np.isnan(differences)) else max(differences, default=0.0)


def _check_finite(params, where: str) -> None:
    for path, value in traverse_util.flatten_dict(params).items():
        if not np.isfinite(np.asarray(value)).all():
            raise CheckpointError(f"{where}: tensor {'/'.join(path)} holds NaN or infinite values; nothing exported")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python convert.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="default",
                        help="a Hugging Face BERT directory, or 'default' for the embedded MiniLM")
    parser.add_argument("--out", required=True, help="directory to write the Hugging Face files to")
    parser.add_argument("--which", default="best",
                        help="for a training workdir: best, latest or a step number")
    parser.add_argument("--encoder-only", action="store_true",
                        help="for a training workdir: the encoder only, without the task models in DIR/<task>/")
    args = parser.parse_args(argv)
    from mtbert_jax.run import command

    return command.ending(lambda: _convert(args))


def _convert(args: argparse.Namespace) -> int:
    exports, notes = [], []
    out = Path(args.out)
    is_workdir = (Path(args.checkpoint) / "checkpoints").is_dir()
    atomic.check_output_directory(out, [Path(args.checkpoint)] if is_workdir else [])
    # Written whole under another name, read back and compared, then renamed into place; refused
    # or interrupted, nothing half-written is left.
    with atomic.staged_directory(out) as partial:
        if is_workdir:
            run_config, trained, step = restore_trained(args.checkpoint, args.which)
            source = resolve_checkpoint_dir(run_config["checkpoint"])
            config = BertConfig.from_json_file(source / "config.json")
            params = trained["bert"]
            print(f"fine-tuned encoder of {args.checkpoint} at step {step}")
        else:
            source = resolve_checkpoint_dir(args.checkpoint)
            config, params, report = load_hf_checkpoint(source)
            print(report.summary())
        params = jax.device_get(params)
        _check_finite(params, args.checkpoint)
        export_hf_checkpoint(params, config, partial, tokenizer_dir=source)
        _, reread, _ = load_hf_checkpoint(partial)
        difference = _max_difference(params, reread)
        if difference != 0:
            raise CheckpointError(f"{out}: the exported tensors read back differently (max abs difference "
                                  f"{difference:g}); nothing was written")
        if is_workdir and not args.encoder_only:
            from mtbert_jax.run.task_export import export_task_models  # loads the model: only for a workdir
            exports, notes = export_task_models(args.checkpoint, args.which, partial, final_dir=out)
        atomic.replace_directory(partial, out)
    n = sum(np.size(x) for x in jax.tree_util.tree_leaves(params))
    print(f"wrote {out}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"{n:,} parameters; read back, max abs difference {difference:g}")
    for export in exports:
        print(export.summary())
    for note in notes:
        print(f"note: {note}")
    return 0


def command() -> int:
    """The command line (convert.py, the mtbert-convert script): errors end in one line."""
    from mtbert_jax.run import command as command_line

    command_line.start()
    return main()


if __name__ == "__main__":
    sys.exit(command())
