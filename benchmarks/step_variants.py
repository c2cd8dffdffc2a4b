"""Step time and peak memory of the train step with SMART, PCGrad and both, against the plain
(summed-gradient) step, on the default model (embedded MiniLM), three tasks per step.

python benchmarks/step_variants.py [--batch 32] [--seq 64] [--steps 5]
Each variant runs in its own process (peak resident memory is per process). Prints a table
and a JSON line. Times are medians over the measured steps, after two warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = {"plain": dict(combiner="sum", smart=False), "pcgrad": dict(combiner="pcgrad", smart=False),
            "smart": dict(combiner="sum", smart=True), "smart+pcgrad": dict(combiner="pcgrad", smart=True)}
TASKS = ("sst", "quora", "sts")


def run_variant(name: str, batch: int, seq: int, steps: int) -> dict:
    import jax
    import numpy as np

    from mtbert_jax import distributed
    from mtbert_jax.hf_checkpoint import load_hf_checkpoint
    from mtbert_jax.model_config import ModelConfig
    from mtbert_jax.multitask_model import init_model
    from mtbert_jax.objectives import ObjectiveConfig
    from mtbert_jax.optimizer import OptimizerConfig, make_optimizer
    from mtbert_jax.smart import SmartConfig
    from mtbert_jax.train_step import StepRunner, TrainState

    variant = VARIANTS[name]
    bert_config, bert_params, _ = load_hf_checkpoint("default")
    model, params = init_model(bert_config, ModelConfig(tasks=TASKS), jax.random.PRNGKey(0), bert_params)
    optimizer = make_optimizer(OptimizerConfig(combiner=variant["combiner"]), params, TASKS, 1000, 3,
                               jax.random.PRNGKey(1))
    smart = SmartConfig(tasks=TASKS if variant["smart"] else ())
    runner = StepRunner(model, optimizer, TASKS, {}, objective=ObjectiveConfig(smart=smart), total_steps=1000)
    state = distributed.replicate(TrainState(params, optimizer.tx.init(params), np.zeros((), np.int32),
                                             params if variant["smart"] else None))
    rng = np.random.default_rng(0)

    def batches():
        out = {}
        for task in TASKS:
            out[task] = distributed.split_for_devices({
                "input_ids": rng.integers(1000, 30000, (batch, seq)).astype(np.int32),
                "token_type_ids": np.zeros((batch, seq), np.int32),
                "attention_mask": np.ones((batch, seq), np.int32),
                "labels": (rng.uniform(0, 5, batch) if task == "sts" else rng.integers(0, 2, batch)).astype(
                    np.float32 if task == "sts" else np.int32),
                "weights": np.ones(batch, np.float32)})
        return out

    times = []
    for step in range(steps + 2):
        data = batches()
        start = time.perf_counter()
        state, metrics = runner(state, data, step, jax.random.PRNGKey(2))
        jax.block_until_ready(state.params)
        if step >= 2:
            times.append(time.perf_counter() - start)
    return {"variant": name, "step_seconds": statistics.median(times),
            "examples_per_second": 3 * batch / statistics.median(times),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.batch, args.seq, args.steps)))
        return
    rows = []
    for name in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--variant", name, "--batch", str(args.batch),
                              "--seq", str(args.seq), "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    plain = rows[0]["step_seconds"]
    print(f"{'variant':<14} {'step s':>8} {'x plain':>8} {'ex/s':>8} {'peak RSS MiB':>13}")
    for r in rows:
        r["ratio_to_plain"] = r["step_seconds"] / plain
        print(f"{r['variant']:<14} {r['step_seconds']:>8.3f} {r['ratio_to_plain']:>8.2f} "
              f"{r['examples_per_second']:>8.1f} {r['peak_rss_mib']:>13.0f}")
    print(json.dumps({"batch": args.batch, "seq": args.seq, "tasks": TASKS, "results": rows}))


if __name__ == "__main__":
    main()
