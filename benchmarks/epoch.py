"""A real training epoch over the SST, Quora and STS training files: ours against the course's
PyTorch reference loop.

Ours: the embedded MiniLM through mtbert_jax's StepRunner on bucketed batches (records grouped
by length, padded to a multiple of 16), and on packed batches (several records per row, batches
of nearly equal tokens in one row shape per task, data/packing.py; the same records per step).
Reference: the same checkpoint in transformers' BertModel with the starter code's batching (random batches padded to the longest record in the
batch), a linear head per task, torch.optim.AdamW. Same token ids, records, batch size, one
task per step in the same task order, dropout on, no clipping. Times include everything
after the data is tokenized, compilation too: ours compiles once per task and bucket length,
so each of our sides runs twice, first with an empty persistent compilation cache (a first run), then with the
cache that run filled (a restarted or repeated run); the compile time of the cold run is
estimated as each (task, shape)'s first step minus that shape's median step.

python benchmarks/epoch.py                              # the whole training files (slow on a CPU)
python benchmarks/epoch.py --examples-per-task 1024     # a random subset of each file
python benchmarks/epoch.py --no-bucketed                  # only the packed side and the reference
python benchmarks/epoch.py --dtype bfloat16               # bf16 matmuls on both sides (torch autocast)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time

from benchmarks import common

TASKS = ("sst", "quora", "sts")
MAX_LENGTH, BUCKET_STEP, SEED = 128, 16, 0


def load_data(examples_per_task: int, checkpoint: str) -> dict:
    import numpy as np

    from mtbert_jax.checkpoints.tokenizer import BertTextTokenizer
    from mtbert_jax.data.task_files import resolve_data_dir
    from mtbert_jax.data.tokenized import load_task_data

    tokenizer = BertTextTokenizer(checkpoint)
    data = {}
    for task in TASKS:
        full = load_task_data(task, "train", resolve_data_dir(None), tokenizer, MAX_LENGTH, "cross")
        if examples_per_task and examples_per_task < len(full):
            keep = np.sort(np.random.default_rng(SEED).choice(len(full), examples_per_task, replace=False))
            full = full.subset(keep)
        data[task] = full
    return data


def task_order(num_batches: dict) -> list:
    """The same shuffled sequence of task names (one per step) for both sides."""
    import numpy as np

    order = [t for t in TASKS for _ in range(num_batches[t])]
    return [order[i] for i in np.random.default_rng(SEED).permutation(len(order))]


def run_ours(examples_per_task: int, batch_size: int, checkpoint: str, xla_cache: str, packing: bool,
             dtype: str = "float32") -> dict:
    import statistics

    import jax
    import numpy as np

    from mtbert_jax.checkpoints.hf import load_hf_checkpoint
    from mtbert_jax.data.batching import bucket_lengths
    from mtbert_jax.data.packing import BatchLayout
    from mtbert_jax.model.config import ModelConfig
    from mtbert_jax.model.multitask import init_model
    from mtbert_jax.run import compilation_cache
    from mtbert_jax.training import distributed
    from mtbert_jax.training.optimizer import Optimizer, OptimizerConfig
    from mtbert_jax.training.step import StepRunner, TrainState

    compilation_cache.enable(xla_cache)
    data = load_data(examples_per_task, checkpoint)
    start = time.perf_counter()
    bert_config, bert_params, _ = load_hf_checkpoint(checkpoint, dtype)
    model, params = init_model(bert_config, ModelConfig(tasks=TASKS, pooling="pooler"), jax.random.PRNGKey(0), bert_params)
    layout = BatchLayout(bucket_lengths(MAX_LENGTH, BUCKET_STEP), packing=packing)
    batchers = {t: layout.batcher(d, batch_size, shards=jax.local_device_count()) for t, d in data.items()}
    rng = np.random.default_rng(SEED)
    pending = {t: b.pass_order(rng) for t, b in batchers.items()}
    order = task_order({t: len(p) for t, p in pending.items()})
    optimizer = Optimizer(OptimizerConfig(max_grad_norm=0.0), params, TASKS, len(order), 1)
    runner = StepRunner(model, optimizer, TASKS, {}, total_steps=len(order))
    state = distributed.replicate(TrainState.create(params, optimizer))
    key, examples, step_times = jax.random.PRNGKey(1), 0, {}
    for step, task in enumerate(order):
        step_start = time.perf_counter()
        batch = batchers[task].make_batch(pending[task].pop())
        batch.pop("index")
        examples += int(batch["weights"].sum())
        state, _ = runner(state, {task: distributed.split_for_devices(batch)}, key)
        jax.block_until_ready(state.params)  # per-step times; the loop syncs on the loss anyway
        step_times.setdefault((task, batch["input_ids"].shape), []).append(time.perf_counter() - step_start)
    seconds = time.perf_counter() - start
    compile_seconds = sum(t[0] - statistics.median(t[1:]) for t in step_times.values() if len(t) > 1)
    real = sum(b.stats.real_tokens for b in batchers.values())
    padded = sum(b.stats.padded_tokens for b in batchers.values())
    return {"seconds": seconds, "examples": examples, "steps": len(order),
            "padding_efficiency": real / padded, "compiled_shapes": len(step_times),
            "compile_seconds": compile_seconds, "peak_rss_mib": common.peak_rss_mib()}


def run_torch(examples_per_task: int, batch_size: int, checkpoint: str, dtype: str = "float32") -> dict:
    import numpy as np
    import torch
    from transformers import BertModel

    from mtbert_jax.checkpoints.hf import resolve_checkpoint_dir
    from mtbert_jax.checkpoints.tokenizer import pad
    from mtbert_jax.tasks import TASKS as SPECS

    data = load_data(examples_per_task, checkpoint)
    start = time.perf_counter()
    torch.manual_seed(0)
    device = common.torch_device()
    model = BertModel.from_pretrained(str(resolve_checkpoint_dir(checkpoint)), add_pooling_layer=True)
    model = model.to(device).train()
    hidden = model.config.hidden_size
    heads = torch.nn.ModuleDict({t: torch.nn.Linear(hidden, SPECS[t].num_classes if t == "sst" else 1)
                                 for t in TASKS}).to(device)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(heads.parameters()), lr=1e-5,
                                  weight_decay=0.01)
    rng = np.random.default_rng(SEED)
    pending = {}
    for task, d in data.items():
        perm = rng.permutation(len(d))
        pending[task] = [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]
    order = task_order({t: len(p) for t, p in pending.items()})
    real = padded = examples = 0
    autocast = (torch.autocast(device, dtype=torch.bfloat16) if dtype == "bfloat16"
                else contextlib.nullcontext())  # bf16 matmuls, float32 weights: as ours
    for task in order:
        indices, d = pending[task].pop(), data[task]
        b = pad(*zip(*(d.segments[0].get(i) for i in indices)))  # to the longest in the batch
        real, padded, examples = real + int(b.attention_mask.sum()), padded + b.attention_mask.size, examples + len(indices)
        with autocast:
            pooled = model(**{k: torch.from_numpy(v).long().to(device) for k, v in
                              (("input_ids", b.input_ids), ("token_type_ids", b.token_type_ids),
                               ("attention_mask", b.attention_mask))}).pooler_output
            out = heads[task](torch.nn.functional.dropout(pooled, 0.1, training=True)).float()
        labels = torch.from_numpy(d.labels[indices]).to(device)
        if task == "sst":
            loss = torch.nn.functional.cross_entropy(out, labels.long())
        elif task == "quora":
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], labels.float())
        else:
            loss = torch.nn.functional.mse_loss(out[:, 0], labels.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "examples": examples, "steps": len(order),
            "padding_efficiency": real / padded, "peak_rss_mib": common.peak_rss_mib(),
            "attention": model.config._attn_implementation, "machine": common.machine()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples-per-task", type=int, default=0, help="0: every training record")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--checkpoint", default="default")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--xla-cache", help=argparse.SUPPRESS)
    parser.add_argument("--packing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-bucketed", action="store_true", help="run only the packed side and the reference")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="matmul precision on both sides (ours: compute_dtype; PyTorch: autocast)")
    args = parser.parse_args()
    side_args = ["--examples-per-task", str(args.examples_per_task), "--batch", str(args.batch),
                 "--checkpoint", args.checkpoint, "--dtype", args.dtype]
    if args.side == "ours":
        print(json.dumps(run_ours(args.examples_per_task, args.batch, args.checkpoint, args.xla_cache, args.packing,
                                  args.dtype)))
        return
    if args.side == "torch":
        print(json.dumps(run_torch(args.examples_per_task, args.batch, args.checkpoint, args.dtype)))
        return
    ours = {}
    kinds = ((True, "packed"),) if args.no_bucketed else ((False, "bucketed"), (True, "packed"))
    for packing, _ in kinds:
        with tempfile.TemporaryDirectory() as cache:
            flags = ["--side", "ours", "--xla-cache", cache, *side_args] + \
                (["--packing"] if packing else [])
            ours[packing] = (common.run_side(__file__, flags), common.run_side(__file__, flags))
    ref = common.run_side(__file__, ["--side", "torch", *side_args])
    machine = ref.pop("machine")
    rows = []
    sides = [(f"mtbert_jax {kind}, {cache} compile cache", r)
             for packing, kind in kinds for cache, r in zip(("empty", "warm"), ours[packing])]
    for name, r in sides + [("PyTorch reference loop", ref)]:
        rows.append({"side": name, "examples": r["examples"], "steps": r["steps"], "seconds": r["seconds"],
                     "examples_per_second": r["examples"] / r["seconds"],
                     "padding_efficiency": r["padding_efficiency"], "peak_rss_mib": r["peak_rss_mib"],
                     "compiled_shapes": r.get("compiled_shapes"), "compile_seconds": r.get("compile_seconds")})
    for r in rows:
        r["ratio"] = r["examples_per_second"] / rows[-1]["examples_per_second"]
    common.print_table([("side", "side", "s"), ("examples", "examples", "d"), ("steps", "steps", "d"),
                        ("seconds", "seconds", ".1f"), ("examples_per_second", "ex/s", ".1f"),
                        ("ratio", "x reference", ".2f"), ("padding_efficiency", "real/computed tokens", ".3f"),
                        ("peak_rss_mib", "peak RSS MiB", ".0f")], rows)
    for packing, kind in kinds:
        cold = ours[packing][0]
        print(f"ours {kind} compiled {cold['compiled_shapes']} (task, shape) pairs; with an empty cache that took "
              f"about {cold['compile_seconds']:.0f} s of its {cold['seconds']:.0f} s")
    common.print_json("epoch", {"dtype": args.dtype, "batch": args.batch, "examples_per_task": args.examples_per_task,
                                "checkpoint": args.checkpoint,
                                "results": rows}, machine)


if __name__ == "__main__":
    main()
