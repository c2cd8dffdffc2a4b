"""How long the host needs per training step: the real training loop on a tiny random encoder.

With an encoder this small (2 layers, hidden 32) the devices have almost nothing to do, so the
time per step is what the host spends: assembling batches, transferring them, dispatching the
compiled step, logging. That is what a GPU or TPU would wait on. The loop is
`train_and_evaluate` itself (`configs/default.py` shrunk: a tiny checkpoint written to a
temporary directory, the real task files cut to 16 tokens, one task per step, batch 32, the
default's logging every 50 steps); each phase is timed by wrapping the function that does it.

python benchmarks/host_overhead.py                  # 400 steps, the first 100 left out
python benchmarks/host_overhead.py --steps 1000 --warmup 200

Phases: `batch assembly` and `transfer` run in the prefetch thread, overlapped with the step;
`dispatch` (enqueueing the compiled step) and `logging` (fetching the pending metrics, the NaN
check, the JSON line) run in the main thread. `ms per step` is the wall time between steps in
the steady state; `main thread` is the part of it the main thread is busy.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from pathlib import Path

import common


def _timed(owner, name: str, phase: str, log: dict) -> None:
    """Wraps owner.name so that every call adds (start, seconds) to log[phase]."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            log[phase].append((start, time.perf_counter() - start))

    setattr(owner, name, wrapper)


def run(steps: int, warmup: int, batch: int) -> dict:
    import jax

    from configs import default
    from mtbert_jax.checkpoints.hf import default_checkpoint_dir, export_hf_checkpoint
    from mtbert_jax.data import loader
    from mtbert_jax.model.encoder import init_params
    from mtbert_jax.synthetic import tiny_bert_config
    from mtbert_jax.training import distributed, loop, step
    from mtbert_jax.training.loop import train_and_evaluate

    log = collections.defaultdict(list)

    def timed_generator(generator_fn, phase):
        """Times each item a generator function makes (the loader assembles a step's batches)."""
        def wrapper(self):
            iterator = generator_fn(self)
            while True:
                start = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                finally:
                    log[phase].append((start, time.perf_counter() - start))
                yield item
        return wrapper

    loader.MultiTaskLoader.__iter__ = timed_generator(loader.MultiTaskLoader.__iter__, "batch assembly")
    _timed(distributed, "to_devices", "transfer", log)
    _timed(step.StepRunner, "__call__", "dispatch", log)
    _timed(loop.Trainer, "check_pending", "logging (fetch, NaN check)", log)
    _timed(loop.MetricsLog, "write", "logging (JSON line)", log)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = tiny_bert_config(vocab_size=30522, max_position_embeddings=128)
        checkpoint = export_hf_checkpoint(init_params(config, jax.random.PRNGKey(0)), config, tmp / "tiny",
                                          tokenizer_dir=default_checkpoint_dir())
        c = default.get_config()
        c.checkpoint, c.num_epochs, c.max_steps = str(checkpoint), 1, steps
        c.schedule.batch_size, c.checkpoint_every_steps = batch, 10 * steps
        # One sequence length (16 tokens, one bucket, padded batches): one compilation per task,
        # so that the steady state is reached early; the host's work does not depend on the length.
        c.max_length, c.bucket_step, c.packing = 16, 16, False
        start = time.perf_counter()
        train_and_evaluate(c, tmp / "run")
        total = time.perf_counter() - start

    dispatch = log.pop("dispatch")
    starts = [s for s, _ in dispatch]
    steady_from = starts[warmup]
    intervals = [b - a for a, b in zip(starts[warmup:], starts[warmup + 1:])]
    per_step_ms = statistics.median(intervals) * 1e3
    mean_step_ms = (starts[-1] - steady_from) / (len(starts) - 1 - warmup) * 1e3
    phases = {"dispatch": dispatch, **log}
    steady_steps = len(starts) - 1 - warmup
    rows = []
    for phase, calls in phases.items():
        busy = sum(seconds for s, seconds in calls if steady_from <= s < starts[-1])
        rows.append({"phase": phase, "ms_per_step": busy / steady_steps * 1e3,
                     "thread": "prefetch" if phase in ("batch assembly", "transfer") else "main"})
    main_ms = sum(r["ms_per_step"] for r in rows if r["thread"] == "main")
    return {"steps": steps, "warmup": warmup, "batch": batch, "median_ms_per_step": per_step_ms,
            "mean_ms_per_step": mean_step_ms, "main_thread_ms_per_step": main_ms, "phases": rows,
            "total_seconds": total, "machine": common.machine()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=100, help="steps left out (compilation)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    result = common.run_side(__file__, ["--side", "ours", "--steps", str(args.steps), "--warmup",
                                        str(args.warmup), "--batch", str(args.batch)]) if args.side is None else None
    if args.side == "ours":
        import json
        print(json.dumps(run(args.steps, args.warmup, args.batch)))
        return
    machine = result.pop("machine")
    print(f"steady state over steps {args.warmup}-{args.steps}: {result['median_ms_per_step']:.2f} ms per step "
          f"(median; mean {result['mean_ms_per_step']:.2f}), main thread busy "
          f"{result['main_thread_ms_per_step']:.2f} ms per step")
    common.print_table([("phase", "phase", "s"), ("thread", "thread", "s"), ("ms_per_step", "ms per step", ".3f")],
                       result["phases"])
    common.print_json("host_overhead", result, machine)


if __name__ == "__main__":
    main()
