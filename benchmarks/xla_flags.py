"""XLA_FLAGS settings against each other on our own workloads, paired: each round runs every
setting once, in turn, each in a fresh process, so that the machine's drift hits all alike.

Workloads: `inference` (the packed dev evaluation of benchmarks/inference.py, its compiled
pass), `train_step` (one MiniLM training step of benchmarks/train_step.py, seq 64). The
baseline is no XLA_FLAGS; the table gives each setting's median over the rounds, its spread and
its speed relative to the baseline.

python benchmarks/xla_flags.py --setting=--xla_cpu_use_onednn=true [--setting=...]
                               [--workload inference] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from benchmarks import common

HERE = Path(__file__).parent
WORKLOADS = {
    # (script, side arguments, the JSON key holding the seconds to compare)
    "inference": ("inference.py", ["--side", "packed", "--batch", "128"], "seconds"),
    "train_step": ("train_step.py", ["--side", "ours", "--shape", "minilm", "--seq", "64", "--steps", "5"],
                   "step_seconds"),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", action="append", required=True,
                        help="an XLA_FLAGS value to compare with none (repeatable; write --setting=VALUE)")
    parser.add_argument("--workload", default="inference", choices=list(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    script, side_args, key = WORKLOADS[args.workload]
    settings = ["", *args.setting]
    seconds = {s: [] for s in settings}
    for r in range(args.rounds):
        for setting in settings:
            out = common.run_side(str(HERE / script), side_args, {"XLA_FLAGS": setting})
            seconds[setting].append(out[key])
            print(f"round {r + 1}/{args.rounds} {setting or '(none)'}: {out[key]:.3f} s", flush=True)
    base = statistics.median(seconds[""])
    rows = [{"setting": s or "(none)", "median": statistics.median(t), "min": min(t), "max": max(t),
             "speed": base / statistics.median(t)} for s, t in seconds.items()]
    common.print_table([("setting", "XLA_FLAGS", "s"), ("median", "median s", ".3f"), ("min", "min s", ".3f"),
                        ("max", "max s", ".3f"), ("speed", "speed x baseline", ".2f")], rows)
    common.print_json("xla_flags", {"workload": args.workload, "rounds": args.rounds, "results": rows,
                                    "seconds": seconds}, common.machine())


if __name__ == "__main__":
    main()
