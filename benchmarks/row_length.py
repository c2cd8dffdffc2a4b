"""What a packed row's length costs: the same records packed into rows of different lengths.

Packing puts several records in each row, each attending only to itself, but the attention
products and softmax still run over the whole row: a row of L tokens costs its dense layers
(per token) plus attention (per token, growing with L). This measures both on the real model:
the same 128 SST dev records (25 tokens on average) packed into rows of 64 to 256 tokens, timed
as the evaluation forward and as a training step (forward, backward, AdamW, dropout on), and fits
time = a * computed tokens + b * computed tokens * L. `ATTENTION_COST` in data/packing.py (a
training row of L tokens is costed L (1 + L / ATTENTION_COST) dense tokens) should be about the
training step's a / b. docs/performance.md has what it measured.

python benchmarks/row_length.py [--lengths 64 96 128 192 256] [--repeats 7] [--checkpoint default]
"""

from __future__ import annotations

import argparse

from benchmarks import common

RECORDS = 128


def run(lengths: list[int], repeats: int, checkpoint: str) -> dict:
    import jax
    import numpy as np

    from mtbert_jax.checkpoints.hf import load_hf_checkpoint
    from mtbert_jax.checkpoints.tokenizer import BertTextTokenizer
    from mtbert_jax.data.packing import PackedBatcher, _rows_needed
    from mtbert_jax.data.task_files import resolve_data_dir
    from mtbert_jax.data.tokenized import load_task_data
    from mtbert_jax.evaluation.predict import _MODEL_INPUTS, make_predict
    from mtbert_jax.model.config import ModelConfig
    from mtbert_jax.model.multitask import init_model
    from mtbert_jax.training import distributed
    from mtbert_jax.training.optimizer import Optimizer, OptimizerConfig
    from mtbert_jax.training.step import StepRunner, TrainState

    data = load_task_data("sst", "dev", resolve_data_dir(None), BertTextTokenizer(checkpoint), 128, "cross")
    indices = np.arange(RECORDS)
    bert_config, bert_params, _ = load_hf_checkpoint(checkpoint)
    model, params = init_model(bert_config, ModelConfig(tasks=("sst",), pooling="pooler"), jax.random.PRNGKey(0), bert_params)
    predict = make_predict(model)
    optimizer = Optimizer(OptimizerConfig(), params, ("sst",), 1000, 1)
    runner = StepRunner(model, optimizer, ("sst",), {}, total_steps=1000)
    key = jax.random.PRNGKey(1)
    rows_out = []
    for length in lengths:
        batcher = PackedBatcher(data, RECORDS, 128)
        rows = _rows_needed(data.lengths[indices], length)
        batcher.__dict__["shape"] = (length, (rows,))  # this row length, the fewest rows that hold them
        batch = batcher.make_batch(indices)
        inputs = {k: v for k, v in batch.items() if k.startswith(_MODEL_INPUTS)}

        def forward():
            jax.block_until_ready(predict(params, "sst", inputs))

        box = {"state": distributed.replicate(TrainState.create(params, optimizer))}
        train_batch = {"sst": distributed.split_for_devices({k: v for k, v in batch.items() if k != "index"})}

        def step():
            box["state"], _ = runner(box["state"], train_batch, key)
            jax.block_until_ready(box["state"].params)

        forward_s, _ = common.median_seconds(forward, 2, repeats)
        step_s, _ = common.median_seconds(step, 2, repeats)
        rows_out.append({"row_length": length, "rows": rows, "computed_tokens": rows * length,
                         "real_tokens": int(data.lengths[indices].sum()),
                         "forward_ms": forward_s * 1e3, "step_ms": step_s * 1e3})
    return {"rows": rows_out, "machine": common.machine()}


def attention_cost(rows: list[dict], key: str) -> float:
    """a / b of the least-squares fit time = a * T + b * T * L (T computed tokens, L row length)."""
    import numpy as np

    design = np.array([[r["computed_tokens"], r["computed_tokens"] * r["row_length"]] for r in rows], float)
    (a, b), *_ = np.linalg.lstsq(design, np.array([r[key] for r in rows], float), rcond=None)
    return float(a / b) if b > 0 else float("inf")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", nargs="+", type=int, default=[64, 96, 128, 192, 256])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--checkpoint", default="default")
    parser.add_argument("--side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        import json

        print(json.dumps(run(args.lengths, args.repeats, args.checkpoint)))
        return
    result = common.run_side(__file__, ["--side", "--lengths", *map(str, args.lengths), "--repeats",
                                        str(args.repeats), "--checkpoint", args.checkpoint])
    rows = result["rows"]
    shortest = rows[0]
    for r in rows:
        r["forward_vs_shortest"] = r["forward_ms"] / shortest["forward_ms"]
        r["step_vs_shortest"] = r["step_ms"] / shortest["step_ms"]
    common.print_table([("row_length", "row length", "d"), ("rows", "rows", "d"),
                        ("computed_tokens", "computed tokens", "d"), ("real_tokens", "real tokens", "d"),
                        ("forward_ms", "forward ms", ".1f"), ("forward_vs_shortest", "x shortest", ".2f"),
                        ("step_ms", "train step ms", ".1f"), ("step_vs_shortest", "x shortest", ".2f")], rows)
    costs = {"forward": attention_cost(rows, "forward_ms"), "step": attention_cost(rows, "step_ms")}
    print(f"{RECORDS} SST dev records; fitted ATTENTION_COST (dense tokens per token of row length): "
          f"forward {costs['forward']:.0f}, training step {costs['step']:.0f}")
    common.print_json("row_length", {"records": RECORDS, "attention_cost": costs, "results": rows},
                      result["machine"])


if __name__ == "__main__":
    main()
