"""The default recipe on bert-base-uncased, from a local Hugging Face directory.

python train.py --config configs/bert_base.py --config.checkpoint=/path/to/bert-base-uncased
($MTBERT_BERT_BASE_DIR is the default path.)
"""

import os

from configs import default


def get_config(preset: str = ""):
    c = default.pooler_recipe_config(preset)
    c.checkpoint = os.environ.get("MTBERT_BERT_BASE_DIR", "bert-base-uncased")
    c.optimizer.encoder_lr = 2e-5
    return c
