"""Train a multi-task BERT: python train.py --config configs/default.py --workdir runs/NAME

--config.FIELD=VALUE overrides a field; configs/FILE.py:PRESET picks a preset. Re-running the
same command resumes from the latest checkpoint in the workdir.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", "configs/default.py", "Training configuration file.")
flags.DEFINE_string("workdir", "runs/default", "Directory for checkpoints, metrics and plots.")


def parse_flags(argv):
    """absl's parsing, with a bad --config override answered in one line (exit 2)."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
        problem = str(e).strip("\"'") if isinstance(e, (AttributeError, KeyError)) else str(e)
        if isinstance(e, (AttributeError, KeyError)):
            problem = f"no config field {problem!r} (see configs/default.py)"
        print(f"error: {' '.join(overrides) or 'flags'}: {problem}", file=sys.stderr)
        sys.exit(2)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax reports every save at INFO
    from mtbert_jax.errors import MtbertError, exit_on_error, mark_command_line
    from mtbert_jax.run import compilation_cache
    from mtbert_jax.run.loop import train_and_evaluate
    from mtbert_jax.training import distributed

    mark_command_line()
    compilation_cache.enable()
    distributed.initialize_from_env()
    try:
        train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    except (MtbertError, FileNotFoundError) as e:
        if __name__ == "__main__":  # a command line: one line and exit 2, no shutdown noise
            exit_on_error(str(e))
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from mtbert_jax.run.malloc_tunables import restart_with_malloc_tunables

    restart_with_malloc_tunables()  # before anything allocates: glibc reads its tunables at start-up
    app.run(main, flags_parser=parse_flags)
