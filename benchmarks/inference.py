"""Evaluation throughput over the SST, Quora and STS dev files: ours against PyTorch inference.

Ours: what evaluate.py and the training loop's dev evaluation do (mtbert_jax.evaluation.predict:
records batched by length, padded to a multiple of 16, jitted forward, outputs back in file
order), and the same with packing (several records per row of 128 tokens, one batch shape per
task: data/packing.py). Reference: transformers' BertModel in eval mode under torch.no_grad(), batches in file
order padded to the longest record in the batch (the starter code's way), and, for a fairer
view, the same model on length-sorted batches. Same checkpoint, token ids and batch size.
Ours is timed twice: the first pass includes compilation, the second does not.

python benchmarks/inference.py [--batch 64] [--checkpoint default] [--dtype bfloat16]
python benchmarks/inference.py --no-torch      # ours only, on a machine without PyTorch

With --dtype bfloat16 ours runs compute_dtype="bfloat16" and PyTorch runs under bf16 autocast.
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks import common

TASKS = ("sst", "quora", "sts")
MAX_LENGTH = 128


def load_dev(checkpoint: str) -> dict:
    from mtbert_jax.checkpoints.tokenizer import BertTextTokenizer
    from mtbert_jax.data.task_files import resolve_data_dir
    from mtbert_jax.data.tokenized import load_task_data

    tokenizer = BertTextTokenizer(checkpoint)
    return {t: load_task_data(t, "dev", resolve_data_dir(None), tokenizer, MAX_LENGTH, "cross") for t in TASKS}


def run_ours(batch_size: int, checkpoint: str, dtype: str, packing: bool = False) -> dict:
    import jax

    from mtbert_jax.checkpoints.hf import load_hf_checkpoint
    from mtbert_jax.data.batching import bucket_lengths
    from mtbert_jax.data.packing import BatchLayout
    from mtbert_jax.evaluation.predict import make_predict, predict
    from mtbert_jax.model.config import ModelConfig
    from mtbert_jax.model.multitask import init_model

    data = load_dev(checkpoint)
    bert_config, bert_params, _ = load_hf_checkpoint(checkpoint, dtype)
    model, params = init_model(bert_config, ModelConfig(tasks=TASKS, pooling="pooler"), jax.random.PRNGKey(0), bert_params)
    predict_fn, layout = make_predict(model), BatchLayout(bucket_lengths(MAX_LENGTH, 16), packing=packing)
    passes = []
    for _ in range(2):
        start = time.perf_counter()
        for task, d in data.items():
            predict(predict_fn, params, d, batch_size, layout)
        passes.append(time.perf_counter() - start)
    return {"examples": sum(len(d) for d in data.values()), "first_pass_seconds": passes[0],
            "seconds": passes[1], "peak_rss_mib": common.peak_rss_mib(), "machine": common.machine()}


def run_torch(batch_size: int, checkpoint: str, dtype: str) -> dict:
    import contextlib

    import numpy as np
    import torch
    from transformers import BertModel

    from mtbert_jax.checkpoints.hf import resolve_checkpoint_dir
    from mtbert_jax.checkpoints.tokenizer import pad

    data = load_dev(checkpoint)
    device = common.torch_device()
    model = BertModel.from_pretrained(str(resolve_checkpoint_dir(checkpoint))).to(device).eval()
    heads = {t: torch.nn.Linear(model.config.hidden_size, 5 if t == "sst" else 1).to(device).eval() for t in TASKS}

    autocast = (torch.autocast(device, dtype=torch.bfloat16) if dtype == "bfloat16"
                else contextlib.nullcontext())

    def run(sort: bool) -> float:
        start = time.perf_counter()
        with torch.no_grad(), autocast:
            for task, d in data.items():
                segments = d.segments[0]
                order = np.argsort(segments.lengths, kind="stable") if sort else np.arange(len(d))
                outputs = []
                for lo in range(0, len(order), batch_size):
                    b = pad(*zip(*(segments.get(i) for i in order[lo:lo + batch_size])))
                    pooled = model(**{k: torch.from_numpy(v).long().to(device) for k, v in
                                      (("input_ids", b.input_ids), ("token_type_ids", b.token_type_ids),
                                       ("attention_mask", b.attention_mask))}).pooler_output
                    outputs.append(heads[task](pooled).float().cpu().numpy())
        return time.perf_counter() - start

    run(False)  # warm-up (first-call allocations)
    return {"examples": sum(len(d) for d in data.values()), "seconds": run(False), "sorted_seconds": run(True),
            "peak_rss_mib": common.peak_rss_mib(), "machine": common.machine()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--checkpoint", default="default")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="ours: compute_dtype; PyTorch: bf16 autocast")
    parser.add_argument("--no-torch", action="store_true", help="ours only (a machine without PyTorch)")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        run = {"ours": run_ours, "packed": lambda *a: run_ours(*a, packing=True), "torch": run_torch}[args.side]
        print(json.dumps(run(args.batch, args.checkpoint, args.dtype)))
        return
    side_args = ["--batch", str(args.batch), "--checkpoint", args.checkpoint, "--dtype", args.dtype]
    ours = common.run_side(__file__, ["--side", "ours", *side_args])
    packed = common.run_side(__file__, ["--side", "packed", *side_args])
    ref = None if args.no_torch else common.run_side(__file__, ["--side", "torch", *side_args])
    machine = ours.pop("machine") if ref is None else ref.pop("machine")
    n = ours["examples"]
    rows = [{"side": "mtbert_jax predict (compiled)", "seconds": ours["seconds"]},
            {"side": "mtbert_jax predict (1st pass, compiling)", "seconds": ours["first_pass_seconds"]},
            {"side": "mtbert_jax predict, packed (compiled)", "seconds": packed["seconds"]},
            {"side": "mtbert_jax predict, packed (1st pass, compiling)", "seconds": packed["first_pass_seconds"]}]
    if ref is not None:
        rows += [{"side": "PyTorch, file order (starter code)", "seconds": ref["seconds"]},
                 {"side": "PyTorch, length-sorted batches", "seconds": ref["sorted_seconds"]}]
    for r in rows:
        r["examples_per_second"] = n / r["seconds"]
        r["ours_speedup"] = r["seconds"] / ours["seconds"]
    common.print_table([("side", "side", "s"), ("seconds", "seconds", ".2f"),
                        ("examples_per_second", "ex/s", ".1f"), ("ours_speedup", "ours (compiled) x", ".2f")], rows)
    print(f"{n} dev examples (SST, Quora, STS), batch {args.batch}, {args.dtype}; peak RSS ours "
          f"{ours['peak_rss_mib']:.0f} MiB" + (f", torch {ref['peak_rss_mib']:.0f} MiB" if ref else ", PyTorch not run"))
    ratios = {"ratio_vs_starter": ref["seconds"] / ours["seconds"],
              "ratio_vs_sorted": ref["sorted_seconds"] / ours["seconds"],
              "packed_ratio_vs_sorted": ref["sorted_seconds"] / packed["seconds"],
              "torch_peak_rss_mib": ref["peak_rss_mib"]} if ref else dict.fromkeys(
        ("ratio_vs_starter", "ratio_vs_sorted", "packed_ratio_vs_sorted", "torch_peak_rss_mib"))
    common.print_json("inference", {"batch": args.batch, "dtype": args.dtype, "examples": n, "checkpoint": args.checkpoint,
                                    "torch": ref is not None, **ratios, "ours_peak_rss_mib": ours["peak_rss_mib"],
                                    "results": rows}, machine)


if __name__ == "__main__":
    main()
