"""The default recipe on all-mpnet-base-v2 (MPNet, 12 layers, hidden 768), installed by
`bash setup.sh --models`.

python train.py --config configs/mpnet.py --workdir runs/mpnet
python train.py --config configs/mpnet.py:quick --workdir runs/mpnet_quick   # 20 steps

Mean pooling, as all-mpnet-base-v2 was trained (its pretrained pooler is untrained), and
cross-encoder pair heads (`<s> A </s></s> B </s>`).
"""

from configs import default


def get_config(preset: str = ""):
    c = default.get_config(preset)
    c.checkpoint = "all-mpnet-base-v2"
    # A base-size encoder: the rate BERT-base is fine-tuned at, not MiniLM's 5e-5.
    c.optimizer.encoder_lr = 2e-5
    return c
