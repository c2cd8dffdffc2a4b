"""One error hierarchy: everything the user can fix is an MtbertError, and both command lines
(train.py, evaluate.py) print its message on one line and exit with status 2."""


class MtbertError(Exception):
    """A problem the user can fix; the message names the file, field or key and what was expected."""


class ConfigError(MtbertError, ValueError):
    """A configuration value is unknown, out of range or inconsistent with another."""


class DataError(MtbertError, ValueError):
    """A task file cannot be read; the message names the file, line and field."""


class CheckpointError(MtbertError, ValueError):
    """A checkpoint (Hugging Face directory or training workdir) cannot be read or does not fit."""


class TrainingError(MtbertError, RuntimeError):
    """The run cannot go on (a NaN loss, an impossible combination found while running)."""
