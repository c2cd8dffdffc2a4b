"""How long the host needs per training step: the real training loop on a tiny random encoder.

With an encoder this small (2 layers, hidden 32, a vocabulary of the checkpoint's first 2,048
word pieces, so that AdamW's pass over the embedding table is small too) the devices have little
to do, so the time per step is what the host spends: assembling batches, transferring them,
dispatching the compiled step, logging. That is what a GPU or TPU would wait on. The loop is
`train_and_evaluate` itself (`configs/default.py` shrunk: a tiny checkpoint written to a
temporary directory, the real task files cut to 16 tokens, one task per step, batch 32, the
default's logging every 50 steps); each phase is timed by wrapping the function that does it,
in wall time and in the CPU time of the thread that runs it.

python benchmarks/host_overhead.py                  # 400 steps, the first 100 left out
python benchmarks/host_overhead.py --steps 1000 --warmup 200
python benchmarks/host_overhead.py --checkpoint DIR  # its vocabulary, where the embedded MiniLM is not installed
python benchmarks/host_overhead.py --watching all   # TensorBoard and W&B offline on (default: TensorBoard, as a run)

Phases: `batch assembly` and `transfer` run in the prefetch thread, overlapped with the step;
`dispatch` (enqueueing the compiled step) and `logging` (fetching the pending metrics, the NaN
check, the JSON line) run in the main thread. `ms per step` is the wall time between steps in
the steady state. On a CPU the "device" is the same two cores: the wall time then includes
waiting for the tiny model's own computation, and XLA:CPU runs part of each program on the
thread that dispatches it. The main thread's CPU time per step (all of it, tqdm and the loop's
bookkeeping included) is the host's cost that an accelerator would see, at most.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import common


def _timed(owner, name: str, phase: str, log: dict) -> None:
    """Wraps owner.name so that every call adds (start, wall seconds, this thread's CPU seconds,
    this thread's CPU clock at the start) to log[phase]."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            log[phase].append((start, time.perf_counter() - start, time.thread_time() - cpu, cpu))

    setattr(owner, name, wrapper)


def run(steps: int, warmup: int, batch: int, checkpoint: str = "default", watching: str = "default") -> dict:
    import jax

    from configs import default
    from mtbert_jax.checkpoints.hf import export_hf_checkpoint, resolve_checkpoint_dir
    from mtbert_jax.data import loader
    from mtbert_jax.model.encoder import init_params
    from mtbert_jax.run import loop
    from mtbert_jax.run.loop import train_and_evaluate
    from mtbert_jax.synthetic import tiny_bert_config
    from mtbert_jax.training import distributed, step

    log = collections.defaultdict(list)

    def timed_generator(generator_fn, phase):
        """Times each item a generator function makes (the loader assembles a step's batches)."""
        def wrapper(self):
            iterator = generator_fn(self)
            while True:
                start, cpu = time.perf_counter(), time.thread_time()
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                finally:
                    log[phase].append((start, time.perf_counter() - start, time.thread_time() - cpu, cpu))
                yield item
        return wrapper

    loader.MultiTaskLoader.__iter__ = timed_generator(loader.MultiTaskLoader.__iter__, "batch assembly")
    _timed(distributed, "to_devices", "transfer", log)
    _timed(step.StepRunner, "__call__", "dispatch", log)
    _timed(loop.Trainer, "check_pending", "logging (fetch, NaN check)", log)
    _timed(loop.MetricsLog, "write", "logging (JSON line)", log)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # The first 2,048 word pieces keep the special tokens' ids; the rest of a text becomes
        # [UNK] and single characters, which costs the host the same.
        vocab = (resolve_checkpoint_dir(checkpoint) / "vocab.txt").read_text(encoding="utf-8").splitlines()[:2048]
        (tmp / "vocab").mkdir()
        (tmp / "vocab" / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        config = tiny_bert_config(vocab_size=len(vocab), max_position_embeddings=128)
        checkpoint = export_hf_checkpoint(init_params(config, jax.random.PRNGKey(0)), config, tmp / "tiny",
                                          tokenizer_dir=tmp / "vocab")
        c = default.get_config()
        c.checkpoint, c.num_epochs, c.max_steps = str(checkpoint), 1, steps
        c.schedule.batch_size, c.checkpoint_every_steps = batch, 10 * steps
        # One sequence length (16 tokens, one bucket, padded batches): one compilation per task,
        # so that the steady state is reached early; the host's work does not depend on the length.
        c.max_length, c.bucket_step, c.packing = 16, 16, False
        # What a watched run adds: TensorBoard events (on in every run unless turned off), W&B.
        c.tensorboard = watching != "off"
        c.wandb = "offline" if watching == "all" else "disabled"
        start = time.perf_counter()
        train_and_evaluate(c, tmp / "run")
        total = time.perf_counter() - start

    dispatch = log.pop("dispatch")
    starts = [s for s, *_ in dispatch]
    steady_from = starts[warmup]
    intervals = [b - a for a, b in zip(starts[warmup:], starts[warmup + 1:])]
    per_step_ms = statistics.median(intervals) * 1e3
    mean_step_ms = (starts[-1] - steady_from) / (len(starts) - 1 - warmup) * 1e3
    phases = {"dispatch": dispatch, **log}
    steady_steps = len(starts) - 1 - warmup
    rows = []
    for phase, calls in phases.items():
        steady = [(wall, cpu) for s, wall, cpu, _ in calls if steady_from <= s < starts[-1]]
        rows.append({"phase": phase, "ms_per_step": sum(w for w, _ in steady) / steady_steps * 1e3,
                     "cpu_ms_per_step": sum(c for _, c in steady) / steady_steps * 1e3,
                     "thread": "prefetch" if phase in ("batch assembly", "transfer") else "main"})
    main_ms = sum(r["ms_per_step"] for r in rows if r["thread"] == "main")
    # The main thread's whole CPU time between the first and the last steady dispatch.
    main_cpu_ms = (dispatch[-1][3] - dispatch[warmup][3]) / steady_steps * 1e3
    return {"steps": steps, "warmup": warmup, "batch": batch, "vocab_size": config.vocab_size, "watching": watching,
            "median_ms_per_step": per_step_ms, "mean_ms_per_step": mean_step_ms,
            "main_thread_ms_per_step": main_ms, "main_thread_cpu_ms_per_step": main_cpu_ms,
            "phases": rows, "total_seconds": total, "machine": common.machine()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=100, help="steps left out (compilation)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--checkpoint", default="default", help="whose vocabulary to cut (default: the embedded MiniLM)")
    parser.add_argument("--watching", choices=["off", "default", "all"], default="default",
                        help="off: no TensorBoard; default: TensorBoard (as a run); all: TensorBoard and W&B offline")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    result = common.run_side(__file__, ["--side", "ours", "--steps", str(args.steps), "--warmup",
                                        str(args.warmup), "--batch", str(args.batch), "--checkpoint",
                                        args.checkpoint, "--watching", args.watching]) if args.side is None else None
    if args.side == "ours":
        import json
        print(json.dumps(run(args.steps, args.warmup, args.batch, args.checkpoint, args.watching)))
        return
    machine = result.pop("machine")
    print(f"steady state over steps {args.warmup}-{args.steps}: {result['median_ms_per_step']:.2f} ms per step "
          f"(median; mean {result['mean_ms_per_step']:.2f}), main thread in the phases "
          f"{result['main_thread_ms_per_step']:.2f} ms per step, its CPU time "
          f"{result['main_thread_cpu_ms_per_step']:.2f} ms per step (everything it does)")
    common.print_table([("phase", "phase", "s"), ("thread", "thread", "s"), ("ms_per_step", "wall ms per step", ".3f"),
                        ("cpu_ms_per_step", "CPU ms per step", ".3f")], result["phases"])
    common.print_json("host_overhead", result, machine)


if __name__ == "__main__":
    main()
