"""Train a multi-task BERT: python train.py --config configs/default.py --workdir runs/NAME

--config.FIELD=VALUE overrides a field; configs/FILE.py:PRESET picks a preset. Re-running the
same command resumes from the latest checkpoint in the workdir.

Exit status: 0 done; 2 refused (one line says why; nothing in the workdir changed); 75 stopped
by SIGTERM or SIGUSR1 (a preempted cluster job; a checkpoint saved if a step was trained): run it
again; 130 Ctrl-C (saved likewise; a second Ctrl-C stops at once); 69 a multi-process job that
could not form or lost a process (mtbert_jax/run/command.py).
"""

import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from mtbert_jax.errors import ConfigError

config_flags.DEFINE_config_file("config", "configs/default.py", "Training configuration file.")
flags.DEFINE_string("workdir", "runs/default", "Directory for checkpoints, metrics and plots.")


def parse_flags(argv):
    """absl's parsing, with a bad --config file, preset or override raised as a ConfigError
    (command.ending answers it in one line, exit 2)."""
    config_file = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
    if config_file is None and "--config" in argv[1:-1]:
        config_file = argv[argv.index("--config") + 1]
    if config_file is not None and not Path(config_file.split(":", 1)[0]).is_file():
        # ml_collections would defer the failure to the first use of the config, as a traceback.
        raise ConfigError(f"--config {config_file}: no such file")
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        text = [line.strip() for line in str(e).splitlines() if line.strip()]
        if config_file and "config file" in str(e):  # the file's own error is its traceback's last line
            problem = "no such file" if "No such file" in text[-1] else text[-1]
            raise ConfigError(f"--config {config_file}: {problem}") from None
        _refuse_override(argv, e)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        _refuse_override(argv, e)


def _refuse_override(argv, e):
    """A bad --config.FIELD=VALUE: a ConfigError naming it (one line, exit 2)."""
    overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    problem = str(e).strip("\"'") if isinstance(e, (AttributeError, KeyError)) else str(e)
    if isinstance(e, (AttributeError, KeyError)):
        problem = f"no config field {problem!r} (see configs/default.py)"
    raise ConfigError(f"{' '.join(overrides) or 'flags'}: {problem}") from None


def main(argv) -> int:
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax reports every save at INFO
    from mtbert_jax.run import cluster, compilation_cache
    from mtbert_jax.run.loop import train_and_evaluate

    compilation_cache.enable()
    cluster.join()  # a multi-process job: formed within a bounded time, or one line
    train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    return 0


if __name__ == "__main__":
    from mtbert_jax.run.malloc_tunables import restart_with_malloc_tunables

    restart_with_malloc_tunables()  # before anything allocates: glibc reads its tunables at start-up
    from mtbert_jax.run import command

    command.start()  # signals are caught from here on, flag parsing and loading included
    sys.exit(command.ending(lambda: app.run(main, flags_parser=parse_flags), resumable=True))
