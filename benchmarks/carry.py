"""Builds carry/: what the accelerator check needs on a GPU host that has its own jax + CUDA but
no package index, within the 64 MiB that one call to such a host carries with the working tree.

python benchmarks/carry.py                        # carry/wheels, carry/minilm-float16, carry/data.tar.gz
python benchmarks/carry.py --python-version 3.12  # the GPU host's Python (binary wheels are per version)
python benchmarks/carry.py --no-download          # the checkpoint and the data only (wheels already there)

- carry/wheels: the pinned flax, optax, orbax-checkpoint, ml-collections and absl-py
  (requirements.txt), and their dependencies that an environment with jax, PyTorch and
  transformers may lack, at the versions that resolve with those pins; `pip download --no-deps`
  of exactly these, binary wheels for the host's Python. benchmarks/on_device.sh installs the
  pins, and of the rest only what the host lacks. Not carried: tensorstore (21 MB as a wheel;
  orbax-checkpoint needs it), matplotlib, scipy, tokenizers, safetensors, tqdm: the host must
  have them (the check's device part lists what it found).
- carry/minilm-float16: the embedded MiniLM (or --checkpoint) in float16 (float16_checkpoint.py).
- carry/data.tar.gz: the SST, Quora and STS train and dev files the default recipe reads.

Prints each item's size and the total with the working tree's tracked files; exits 1 when it
passes the limit. carry/ is in .gitignore: nothing of it goes into git.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from benchmarks import float16_checkpoint

ROOT = Path(__file__).resolve().parents[1]
LIMIT_BYTES = 64 * 2**20
PINNED = ("flax", "optax", "orbax-checkpoint", "ml-collections", "absl-py")  # their versions: requirements.txt
# flax's, optax's, orbax-checkpoint's and ml-collections' dependencies beyond jax, numpy, PyTorch and
# transformers (and theirs), at the versions pip resolved with the pins in this project's .venv.
DEPENDENCIES = ("aiofiles==25.1.0", "etils==1.15.0", "humanize==4.17.0", "msgpack==1.2.4",
                "prometheus_client==0.26.0", "protobuf==7.36.2", "psutil==7.2.2", "PyYAML==6.0.4",
                "rich==15.0.0", "markdown-it-py==4.3.0", "mdurl==0.1.2", "Pygments==2.21.0",
                "simplejson==4.3.0", "treescope==0.1.10", "uvloop==0.23.0", "typing_extensions==4.16.0")
DATA_FILES = ("ids-sst-train.csv", "ids-sst-dev.csv", "quora-train.csv", "quora-dev.csv", "sts-train.csv",
              "sts-dev.csv")


def pinned_requirements() -> list[str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if version and name.strip() in PINNED:
            pins[name.strip()] = f"{name.strip()}=={version.strip()}"
    missing = [p for p in PINNED if p not in pins]
    if missing:
        raise SystemExit(f"error: requirements.txt pins no version of {', '.join(missing)}")
    return [pins[p] for p in PINNED]


def download_wheels(out: Path, python_version: str) -> None:
    """Binary wheels only, for CPython `python_version` on x86-64 Linux, no dependencies but the listed."""
    out.mkdir(parents=True, exist_ok=True)
    platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                             "manylinux_2_12_x86_64", "manylinux2010_x86_64", "manylinux_2_5_x86_64",
                             "manylinux1_x86_64") for a in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", python_version, "--implementation", "cp", *platforms, "--dest", str(out),
               *pinned_requirements(), *DEPENDENCIES]
    subprocess.run(command, check=True)


def pack_data(data_dir: Path, out: Path) -> None:
    with tarfile.open(out, "w:gz") as tar:
        for name in DATA_FILES:
            tar.add(data_dir / name, arcname=name)


def size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tracked_bytes() -> int:
    """The working tree's tracked files, which travel with carry/ (read with `git ls-files`)."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    return sum((ROOT / n).stat().st_size for n in names.stdout.split("\0") if n and (ROOT / n).is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "carry")
    parser.add_argument("--python-version", default="3.12", help="the GPU host's Python (3.12 on the H100 host)")
    parser.add_argument("--checkpoint", default="default", help="the checkpoint to halve (default: embedded MiniLM)")
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("MTBERT_DATA_DIR") or ROOT.parent / "shared" / "data"))
    parser.add_argument("--no-download", action="store_true", help="keep carry/wheels as it is")
    args = parser.parse_args(argv)

    if not args.no_download:
        shutil.rmtree(args.out / "wheels", ignore_errors=True)
        download_wheels(args.out / "wheels", args.python_version)
    checkpoint = args.out / "minilm-float16"
    shutil.rmtree(checkpoint, ignore_errors=True)
    float16_checkpoint.write_float16_copy(float16_checkpoint.source_dir(args.checkpoint), checkpoint)
    pack_data(args.data_dir, args.out / "data.tar.gz")

    items = {"wheels": size(args.out / "wheels"), "minilm-float16": size(checkpoint),
             "data.tar.gz": size(args.out / "data.tar.gz"), "tracked files": tracked_bytes()}
    total = sum(items.values())
    for name, n in items.items():
        print(f"{name:>16}  {n / 2**20:6.1f} MiB")
    print(f"{'total':>16}  {total / 2**20:6.1f} MiB of {LIMIT_BYTES / 2**20:.0f} MiB")
    if total > LIMIT_BYTES:
        print(f"error: {total / 2**20:.1f} MiB is over the {LIMIT_BYTES / 2**20:.0f} MiB a call carries",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
