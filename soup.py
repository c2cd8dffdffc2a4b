"""Average the weights of several runs into one model (a model soup), written as a workdir.

python soup.py --workdir runs/a_s0 --workdir runs/a_s1 --workdir runs/a_s2 --out runs/a_soup
python soup.py ... --kind uniform            # every run's weights averaged (default: greedy)
python soup.py ... --checkpoint latest       # the runs' last checkpoints (default: best)

greedy: the runs ranked by their own dev score; each joins the soup only if the soup's dev score
does not drop. The runs must share the architecture, tasks and starting checkpoint. The soup is
one model, as fast as one run: `python evaluate.py --workdir runs/a_soup`, `python convert.py
--checkpoint runs/a_soup --out DIR` and `python compare.py runs` work on it; soup.json says what
went in.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--workdir", required=True, action="append", help="a run to average (at least two)")
    parser.add_argument("--out", required=True, help="the soup's workdir (new or empty)")
    parser.add_argument("--kind", choices=["greedy", "uniform"], default="greedy")
    parser.add_argument("--checkpoint", default="best", help="best, latest or a step number, for every run")
    parser.add_argument("--batch-size", type=int, default=128, help="dev evaluation batch size")
    args = parser.parse_args(argv)

    from mtbert_jax.run import command

    return command.ending(lambda: _soup(args))


def _soup(args: argparse.Namespace) -> int:
    from mtbert_jax.run import compilation_cache
    from mtbert_jax.run.soup import make_soup

    compilation_cache.enable()
    make_soup(args.workdir, args.out, args.kind, args.checkpoint, args.batch_size)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    from mtbert_jax.run.malloc_tunables import restart_with_malloc_tunables

    restart_with_malloc_tunables()
    from mtbert_jax.run import command

    command.start()  # a command line only here: main() called from Python never ends the process
    sys.exit(main())
