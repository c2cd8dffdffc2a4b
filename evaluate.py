"""Evaluate a trained run from its checkpoint.

python evaluate.py --workdir runs/NAME [--checkpoint best|latest|STEP] [--split dev|test|both]
python evaluate.py --workdir runs/NAME --task-file dev:sts=my-sts.csv      # any file in the format
python evaluate.py --workdir runs/NAME --sentence "A gripping film." --pair "How old are you?" "What is your age?"
python evaluate.py --workdir runs/NAME --input-file texts.tsv              # a sentence or a tab-separated pair a line
python evaluate.py --workdir runs/NAME --export-hf runs/NAME/hf            # the fine-tuned encoder as a HF directory
python evaluate.py --workdir runs/NAME --pair-orders both                   # pairs scored in both orders, averaged
python evaluate.py --workdir runs/a_s0 --workdir runs/a_s1 --workdir runs/a_s2 --out runs/a_ensemble
                                                                            # an ensemble: outputs averaged

An ensemble averages each task's class probabilities, paraphrase probability or similarity score
over the runs (`--weights` to weigh them), then scores and writes them exactly as for one run.

Writes WORKDIR/eval/ (an ensemble: --out): metrics.json, predictions/{sst,para,sts,cfimdb}-{split}-output.csv in the
course's format, plots/ (training curves, confusion matrices, STS scatter).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--workdir", required=True, action="append",
                        help="the training run's directory; repeated: an ensemble of runs of the same tasks")
    parser.add_argument("--weights", metavar="W1,W2,...",
                        help="an ensemble's weight per --workdir, in order (default: equal)")
    parser.add_argument("--checkpoint", default="best", help="best, latest or a step number")
    parser.add_argument("--split", default="dev", choices=["dev", "test", "both"])
    parser.add_argument("--task-file", action="append", default=[], metavar="SPLIT:TASK=PATH",
                        help="evaluate TASK on this file instead of the data directory's")
    parser.add_argument("--out", help="output directory (default WORKDIR/eval)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--sentence", action="append", default=[], help="score a sentence (sentiment tasks)")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"),
                        help="score a sentence pair (paraphrase, similarity)")
    parser.add_argument("--input-file", help="lines to score: a sentence, or two tab-separated sentences")
    parser.add_argument("--export-hf", metavar="DIR", help="write the fine-tuned encoder as a HF directory")
    parser.add_argument("--pair-orders", choices=["run", "both", "given"], default="run",
                        help="pair tasks: the mean over both sentence orders (both), the order given "
                             "(given), or as the run's model.symmetric_pairs says (run, the default)")
    args = parser.parse_args(argv)

    from mtbert_jax.run import command

    return command.ending(lambda: _evaluate(parser, args))


def _evaluate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from mtbert_jax.data.task_files import text_lines
    from mtbert_jax.run import compilation_cache
    from mtbert_jax.run.evaluate import evaluate_run, format_table, load_members, parse_weights, score_texts

    compilation_cache.enable()
    weights = parse_weights(args.weights, len(args.workdir)) if args.weights else None
    if args.export_hf:
        if len(args.workdir) > 1:
            parser.error("--export-hf: one --workdir (a soup averages runs into one model: see soup.py)")
        from mtbert_jax.run import convert
        return convert.main(["--checkpoint", args.workdir[0], "--which", args.checkpoint, "--out", args.export_hf])
    symmetric = {"run": None, "both": True, "given": False}[args.pair_orders]
    sentences, pairs = list(args.sentence), [tuple(p) for p in args.pair]
    if args.input_file:
        for line in text_lines(Path(args.input_file)):
            parts = line.split("\t")
            if len(parts) == 2:
                pairs.append((parts[0], parts[1]))
            elif line.strip():
                sentences.append(line)
    if sentences or pairs:
        members = load_members(args.workdir, args.checkpoint, symmetric, weights)
        for entry in score_texts(members, sentences, pairs, weights):
            print(json.dumps(entry))
        return 0
    task_files: dict = {}
    for spec in args.task_file:
        try:
            split_task, path = spec.split("=", 1)
            split, task = split_task.split(":", 1)
        except ValueError:
            parser.error(f"--task-file {spec!r}: expected SPLIT:TASK=PATH, e.g. dev:sts=my-sts.csv")
        task_files.setdefault(split, {})[task] = Path(path)
    splits = ("dev", "test") if args.split == "both" else (args.split,)
    results = evaluate_run(args.workdir, args.checkpoint, splits, task_files,
                           Path(args.out) if args.out else None, args.batch_size,
                           symmetric_pairs=symmetric, weights=weights)
    print(format_table(results))
    print(f"written to {Path(args.out) if args.out else Path(args.workdir[0]) / 'eval'}")
    return 0


if __name__ == "__main__":
    from mtbert_jax.run.malloc_tunables import restart_with_malloc_tunables

    restart_with_malloc_tunables()  # before anything allocates: glibc reads its tunables at start-up
    from mtbert_jax.run import command

    command.start()  # a command line only here: main() called from Python never ends the process
    sys.exit(main())
