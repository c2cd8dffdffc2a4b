"""Random MPNet checkpoints for tests: transformers' MPNetModel (MPNetConfig) with a tokenizer.json,
made in seconds, so that no test needs the 400 MB all-mpnet-base-v2.

The vocabulary is all-mpnet-base-v2's layout built from the embedded MiniLM's BERT vocabulary:
<s> <pad> </s> <unk>, then BERT's 30,522 word pieces, then <mask> (30,527 ids), so that real
sentences tokenize to real word pieces.
"""

from __future__ import annotations

from pathlib import Path

# A 2-layer, hidden-32 MPNet; 514 position rows as all-mpnet-base-v2 (512 usable), so that
# sequences past the relative bias's 128-token range fit.
TINY_MPNET = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=514, layer_norm_eps=1e-5)


def mpnet_vocabulary(bert_vocab: Path) -> list[str]:
    words = bert_vocab.read_text(encoding="utf-8").splitlines()
    return ["<s>", "<pad>", "</s>", "<unk>", *words, "<mask>"]


def save_torch_mpnet(directory: Path, bert_vocab: Path, seed: int = 0, model_class: str = "MPNetModel",
                     **config) -> Path:
    """A randomly initialised transformers MPNet model (TINY_MPNET + `config`), saved with its
    tokenizer (tokenizer.json, vocab.txt) as a Hugging Face directory."""
    import torch
    import transformers

    vocab = mpnet_vocabulary(bert_vocab)
    torch.manual_seed(seed)
    cfg = transformers.MPNetConfig(**{**TINY_MPNET, "vocab_size": len(vocab), **config})
    model = getattr(transformers, model_class)(cfg).eval()
    with torch.no_grad():  # transformers zeroes the bias table; a random one makes parity mean something
        model.base_model.encoder.relative_attention_bias.weight.normal_(0.0, 0.5)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer = transformers.MPNetTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(str(directory))
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return directory
