"""Compare training runs: python compare.py runs   (or a list of workdirs; --markdown)

Groups runs by configuration with the seed left out and prints each group's dev metrics and
overall score as mean +- standard deviation over its seeds (mtbert_jax/run/compare.py).
"""

import sys

if __name__ == "__main__":
    from mtbert_jax.run import command

    command.start()  # before the heavy imports: a signal while they run ends in one line too

from mtbert_jax.run.compare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
