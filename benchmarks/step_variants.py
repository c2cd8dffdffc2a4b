"""Step time and peak memory of the train step with PCGrad, GSE, SMART and SMART with PCGrad,
against the plain (summed-gradient) step, on the default model (embedded MiniLM), three tasks
per step. GSE (seed 002) takes every task's gradient twice per step.

python benchmarks/step_variants.py [--batch 32] [--seq 64] [--steps 8] [--rounds 2] [--variants plain,gse]
Each variant runs in its own process (peak resident memory is per process); the variants run
in turn, `rounds` times over, and each variant's time is the median of all its measured steps
(after two warm-up steps per process), so slow drift of the machine's load hits all alike.
Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from benchmarks import common

VARIANTS = {"plain": dict(combiner="sum", smart=False), "pcgrad": dict(combiner="pcgrad", smart=False),
            "gse": dict(combiner="gse", smart=False), "smart": dict(combiner="sum", smart=True),
            "smart+pcgrad": dict(combiner="pcgrad", smart=True)}
TASKS = ("sst", "quora", "sts")


def run_variant(name: str, batch: int, seq: int, steps: int) -> dict:
    import jax
    import numpy as np

    from mtbert_jax.checkpoints.hf import load_hf_checkpoint
    from mtbert_jax.model.config import ModelConfig
    from mtbert_jax.model.multitask import init_model
    from mtbert_jax.synthetic import synthetic_batch
    from mtbert_jax.training import distributed
    from mtbert_jax.training.objectives import ObjectiveConfig
    from mtbert_jax.training.optimizer import Optimizer, OptimizerConfig
    from mtbert_jax.training.smart import SmartConfig
    from mtbert_jax.training.step import StepRunner, TrainState

    variant = VARIANTS[name]
    bert_config, bert_params, _ = load_hf_checkpoint("default")
    model, params = init_model(bert_config, ModelConfig(tasks=TASKS, pooling="pooler"), jax.random.PRNGKey(0), bert_params)
    optimizer = Optimizer(OptimizerConfig(combiner=variant["combiner"]), params, TASKS, 1000, 3,
                          jax.random.PRNGKey(1))
    smart = SmartConfig(tasks=TASKS if variant["smart"] else ())
    runner = StepRunner(model, optimizer, TASKS, {}, objective=ObjectiveConfig(smart=smart), total_steps=1000)
    state = distributed.replicate(TrainState.create(params, optimizer, with_teacher=variant["smart"]))
    rng = np.random.default_rng(0)

    def batches():
        return {task: distributed.split_for_devices(synthetic_batch(
            task, batch, seq, rng, token_range=(1000, 30000), varied_lengths=False)) for task in TASKS}

    times = []
    for step in range(steps + 2):
        data = batches()
        start = time.perf_counter()
        state, metrics = runner(state, data, jax.random.PRNGKey(2))
        jax.block_until_ready(state.params)
        if step >= 2:
            times.append(time.perf_counter() - start)
    return {"variant": name, "times": times, "peak_rss_mib": common.peak_rss_mib(),
            "machine": common.machine()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated, the first is the baseline (default: all)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.batch, args.seq, args.steps)))
        return
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; expected some of {list(VARIANTS)}")
    times = {name: [] for name in names}
    rss = {name: 0.0 for name in names}
    for _ in range(args.rounds):
        for name in names:
            out = common.run_side(__file__, ["--variant", name, "--batch", str(args.batch),
                                             "--seq", str(args.seq), "--steps", str(args.steps)])
            machine = out["machine"]
            times[name] += out["times"]
            rss[name] = max(rss[name], out["peak_rss_mib"])
    rows = [{"variant": name, "step_seconds": statistics.median(t), "steps_measured": len(t),
             "examples_per_second": 3 * args.batch / statistics.median(t), "peak_rss_mib": rss[name],
             "times": t} for name, t in times.items()]
    plain = rows[0]["step_seconds"]  # the first variant named
    for r in rows:
        r["ratio_to_plain"] = r["step_seconds"] / plain
    common.print_table([("variant", "variant", "s"), ("step_seconds", "step s", ".3f"),
                        ("ratio_to_plain", f"x {names[0]}", ".3f"), ("examples_per_second", "ex/s", ".1f"),
                        ("peak_rss_mib", "peak RSS MiB", ".0f")], rows)
    common.print_json("step_variants", {"batch": args.batch, "seq": args.seq, "tasks": TASKS,
                                        "results": rows}, machine)


if __name__ == "__main__":
    main()
