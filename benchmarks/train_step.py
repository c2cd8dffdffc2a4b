"""Train step against PyTorch: examples/s, matmul GFLOP/s (and their share of a plain matmul's),
peak resident memory.

One step = forward, backward and AdamW with dropout on, a linear 5-class head on the pooled
output, batch 32 (or --batches) of random token ids. Ours is mtbert_jax's own StepRunner
(pmapped loss-and-grad, then the optax chain) on an SST model; the reference is transformers' BertModel + nn.Linear +
torch.optim.AdamW, same shapes, same weight decay, no clipping on either side.

An MPNet shape (mpnet-base: all-mpnet-base-v2's, random weights) runs our encoder of the MPNet
family (relative position bias, positions from row 2) against transformers' MPNetModel, with
the same head, loss and optimizer; MPNetModel has eager attention only (transformers refuses
"sdpa" for it). Such a row also measures PyTorch at its best on the same layer shapes,
BertModel with SDPA at the BERT shape of the same sizes (bert-base), as `torch_best`.

python benchmarks/train_step.py                                   # minilm and bert-base, seq 64 and 128
python benchmarks/train_step.py --shapes minilm --seqs 64 --steps 10
python benchmarks/train_step.py --dtype bfloat16                  # accelerators: bf16 matmuls (torch autocast)
python benchmarks/train_step.py --shapes bert-base --seqs 128 --batches 32 256
python benchmarks/train_step.py --shapes mpnet-base --seqs 64 128 --dtype bfloat16  # vs MPNetModel and BertModel
python benchmarks/train_step.py --no-torch                        # ours only, on a machine without PyTorch

The plain-matmul limit is a 2048^3 (CPU) or 8192^3 (accelerator) matmul measured in the same
run; on an accelerator utilisation is also given against the datasheet peak
(mtbert_jax.training.flops.DEVICE_PEAKS).
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import common

CLASSES, DROPOUT = 5, 0.1


def run_ours(shape_name: str, seq: int, steps: int, dtype: str, batch_size: int) -> dict:
    import jax
    import numpy as np

    from mtbert_jax.model.bert_config import BertConfig
    from mtbert_jax.model.config import ModelConfig
    from mtbert_jax.model.multitask import init_model
    from mtbert_jax.synthetic import synthetic_batch
    from mtbert_jax.training import distributed
    from mtbert_jax.training.optimizer import Optimizer, OptimizerConfig
    from mtbert_jax.training.step import StepRunner, TrainState

    tasks = ("sst",)
    # Read as a config.json is, so that the family fills in what it implies (MPNet: no token
    # types, pad id 1, positions from row 2).
    bert_config = BertConfig.from_hf_dict(common.SHAPES[shape_name]).replace(compute_dtype=dtype)
    if seq > bert_config.max_positions:
        raise ValueError(f"{shape_name}: seq {seq} is longer than its {bert_config.max_positions} positions")
    model, params = init_model(bert_config, ModelConfig(tasks=tasks, pooling="pooler"), jax.random.PRNGKey(0))
    optimizer = Optimizer(OptimizerConfig(max_grad_norm=0.0), params, tasks, 1000, 1)
    runner = StepRunner(model, optimizer, tasks, {}, total_steps=1000)
    state = distributed.replicate(TrainState.create(params, optimizer))
    rng = np.random.default_rng(0)
    batch = {"sst": distributed.split_for_devices(synthetic_batch(
        "sst", batch_size, seq, rng, token_range=(1000, 30000), varied_lengths=False))}
    box = {"state": state, "step": 0}
    key = jax.random.PRNGKey(1)

    def step():
        box["state"], _ = runner(box["state"], batch, key)
        box["step"] += 1
        jax.block_until_ready(box["state"].params)

    seconds, times = common.median_seconds(step, 2, steps)
    return {"step_seconds": seconds, "times": times, "peak_rss_mib": common.peak_rss_mib()}


def run_torch(shape_name: str, seq: int, steps: int, dtype: str, batch_size: int) -> dict:
    import contextlib

    import torch
    import transformers

    torch.manual_seed(0)
    device = common.torch_device()
    shape = dict(common.SHAPES[shape_name])
    model_type = shape.pop("model_type", "bert")
    # Each family's bare encoder with its default attention: BertModel SDPA, MPNetModel eager (its
    # only one; it takes no token types and makes its position ids from the input ids, from row 2).
    from mtbert_jax.model.families import FAMILIES

    model_class = getattr(transformers, FAMILIES[model_type].architecture)
    config = model_class.config_class(**shape, hidden_dropout_prob=DROPOUT, attention_probs_dropout_prob=DROPOUT)
    model = model_class(config).to(device).train()
    head = torch.nn.Linear(shape["hidden_size"], CLASSES).to(device)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=1e-5,
                                  weight_decay=0.01)
    ids = torch.randint(1000, 30000, (batch_size, seq), device=device)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, CLASSES, (batch_size,), device=device)
    autocast = (torch.autocast(device, dtype=torch.bfloat16) if dtype == "bfloat16"
                else contextlib.nullcontext())

    def step():
        with autocast:
            pooled = model(input_ids=ids, attention_mask=mask).pooler_output
            logits = head(torch.nn.functional.dropout(pooled, DROPOUT, training=True))
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    seconds, times = common.median_seconds(step, 2, steps)
    return {"step_seconds": seconds, "times": times, "peak_rss_mib": common.peak_rss_mib(),
            "attention": model.config._attn_implementation, "model": type(model).__name__}


def run_matmul(dtype: str, with_torch: bool = True) -> dict:
    import jax

    from mtbert_jax.training import flops as model_flops

    accelerator = jax.devices()[0].platform != "cpu"
    size = 8192 if accelerator else 2048
    return {"size": size, "jax_gflops": common.jax_matmul_gflops(size, dtype),
            "torch_gflops": common.torch_matmul_gflops(size, dtype) if with_torch else None,
            "device_peak_flops": model_flops.device_peak_flops(dtype) if accelerator else None,
            "machine": common.machine()}


def compare(shape: str, seq: int, batch: int, ours: dict, ref: dict | None, limit: dict, peak: float | None,
            best: dict | None = None, best_shape: str | None = None) -> dict:
    """One row of the table from both sides' step times (ref None: PyTorch not run, its fields None).
    best: PyTorch at its best on the same layer shapes (BertModel with SDPA at `best_shape`) for a
    shape of another family; None for a BERT shape (ref is that already), its fields None."""
    from mtbert_jax.training import flops as model_flops

    flops = model_flops.train_step_flops(common.SHAPES[shape], batch, seq)
    row = {"shape": shape, "seq": seq, "batch": batch,
           "ours_examples_per_second": batch / ours["step_seconds"],
           "ours_gflops": flops / ours["step_seconds"] / 1e9,
           "ours_rss_mib": ours["peak_rss_mib"], "ours_step_times": ours["times"], "matmul_flops": flops,
           "torch_examples_per_second": None, "torch_gflops": None, "ratio": None, "torch_rss_mib": None,
           "torch_step_times": None, "torch_attention": None, "torch_model": None, "torch_fraction_of_matmul": None,
           "torch_best_shape": None, "torch_best_model": None, "torch_best_attention": None,
           "torch_best_examples_per_second": None, "torch_best_gflops": None, "ratio_best": None,
           "torch_best_rss_mib": None, "torch_best_step_times": None}
    row["ours_fraction_of_matmul"] = row["ours_gflops"] / limit["jax_gflops"]
    if ref is not None:
        row |= {"torch_examples_per_second": batch / ref["step_seconds"],
                "ratio": ref["step_seconds"] / ours["step_seconds"],
                "torch_gflops": flops / ref["step_seconds"] / 1e9, "torch_rss_mib": ref["peak_rss_mib"],
                "torch_step_times": ref["times"], "torch_attention": ref["attention"], "torch_model": ref["model"]}
        row["torch_fraction_of_matmul"] = row["torch_gflops"] / limit["torch_gflops"]
    if best is not None:
        row |= {"torch_best_shape": best_shape, "torch_best_model": best["model"],
                "torch_best_attention": best["attention"],
                "torch_best_examples_per_second": batch / best["step_seconds"],
                "torch_best_gflops": flops / best["step_seconds"] / 1e9,
                "ratio_best": best["step_seconds"] / ours["step_seconds"],
                "torch_best_rss_mib": best["peak_rss_mib"], "torch_best_step_times": best["times"]}
    if peak:
        row["ours_mfu"] = row["ours_gflops"] * 1e9 / peak
        row["torch_mfu"] = row["torch_gflops"] * 1e9 / peak if ref is not None else None
        row["torch_best_mfu"] = row["torch_best_gflops"] * 1e9 / peak if best is not None else None
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["minilm", "bert-base"], choices=list(common.SHAPES))
    parser.add_argument("--seqs", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--batches", nargs="+", type=int, default=[32], help="records per step")
    parser.add_argument("--steps", type=int, default=5, help="measured steps per side (after 2 warm-up)")
    parser.add_argument("--dtype", "--dtypes", dest="dtype", default="float32", choices=["float32", "bfloat16"],
                        help="matmul dtype, one per run (PyTorch under autocast in bfloat16)")
    parser.add_argument("--no-torch", action="store_true", help="ours only (a machine without PyTorch)")
    parser.add_argument("--side", help=argparse.SUPPRESS)  # internal: run one side, print JSON
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    for shape in args.shapes if not args.side else ():
        if max(args.seqs) > common.max_sequence(shape):
            parser.error(f"--seqs {max(args.seqs)}: {shape} holds {common.max_sequence(shape)} positions")
    if args.side:
        import json

        runners = {"ours": run_ours, "torch": run_torch}
        if args.side == "matmul":
            print(json.dumps(run_matmul(args.dtype, with_torch=not args.no_torch)))
        else:
            print(json.dumps(runners[args.side](args.shape, args.seq, args.steps, args.dtype, args.batch)))
        return

    # Every measurement runs in a child process: this one never starts jax or torch (on an
    # accelerator it would hold device memory the children need).
    limit = common.run_side(__file__, ["--side", "matmul", "--dtype", args.dtype] + ["--no-torch"] * args.no_torch)
    size, peak = limit["size"], limit["device_peak_flops"]
    rows = []
    for shape in args.shapes:
        for seq in args.seqs:
            for batch in args.batches:
                side_args = ["--shape", shape, "--seq", str(seq), "--batch", str(batch), "--steps", str(args.steps),
                             "--dtype", args.dtype]
                ours = common.run_side(__file__, ["--side", "ours", *side_args])
                ref = None if args.no_torch else common.run_side(__file__, ["--side", "torch", *side_args])
                best_shape = common.bert_shape_like(shape)
                best = None
                if best_shape and not args.no_torch:
                    best_args = ["--shape", best_shape, *side_args[2:]]
                    best = common.run_side(__file__, ["--side", "torch", *best_args])
                rows.append(compare(shape, seq, batch, ours, ref, limit, peak, best, best_shape if best else None))
                print(f"  measured {shape} seq {seq} batch {batch}", file=sys.stderr)
    print(f"plain {size}^3 {args.dtype} matmul: jax {limit['jax_gflops']:.0f} GFLOP/s, "
          + (f"torch {limit['torch_gflops']:.0f} GFLOP/s" if not args.no_torch else "PyTorch not run")
          + (f"; device peak {peak / 1e9:.0f}" if peak else ""))
    columns = [("shape", "shape", "s"), ("seq", "seq", "d"), ("batch", "batch", "d"),
               ("ours_examples_per_second", "ours ex/s", ".1f"),
               ("torch_examples_per_second", "torch ex/s", ".1f"), ("ratio", "ours/torch", ".2f"),
               *([("torch_best_examples_per_second", "torch_best ex/s", ".1f"),
                  ("ratio_best", "ours/torch_best", ".2f")] if any(r["ratio_best"] for r in rows) else []),
               ("ours_gflops", "ours GFLOP/s", ".0f"), ("torch_gflops", "torch GFLOP/s", ".0f"),
               ("ours_fraction_of_matmul", "ours/matmul", ".2f"),
               ("torch_fraction_of_matmul", "torch/matmul", ".2f"),
               ("ours_rss_mib", "ours RSS MiB", ".0f"), ("torch_rss_mib", "torch RSS MiB", ".0f")]
    if peak:
        columns += [("ours_mfu", "ours MFU", ".3f"), ("torch_mfu", "torch MFU", ".3f"),
                    *([("torch_best_mfu", "torch_best MFU", ".3f")] if any(r["ratio_best"] for r in rows) else [])]
    if not args.no_torch:
        models = {}  # in the order met: "shape: Model (attention)"
        for r in rows:
            models.setdefault(r["shape"], f"{r['shape']}: {r['torch_model']} ({r['torch_attention']})"
                              + (f", torch_best {r['torch_best_model']} ({r['torch_best_attention']}) at "
                                 f"{r['torch_best_shape']}" if r["torch_best_model"] else ""))
        print("torch: " + "; ".join(models.values()))
    common.print_table(columns, rows)
    machine = limit.pop("machine")
    common.print_json("train_step", {"dtype": args.dtype, "steps": args.steps, "matmul_limit": limit,
                                     "torch": not args.no_torch, "results": rows}, machine)


if __name__ == "__main__":
    main()
