"""Export a Hugging Face BERT directory: python convert.py --checkpoint DIR_OR_WORKDIR --out DIR

A training workdir (with --which best|latest|STEP) exports its fine-tuned encoder; the output is
read back and compared before success is reported (mtbert_jax/run/convert.py).
"""

import sys

if __name__ == "__main__":
    from mtbert_jax.run import command

    command.start()  # before the heavy imports: a signal while they run ends in one line too

from mtbert_jax.run.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
