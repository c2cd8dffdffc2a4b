"""Seed 004's MNRL experiment: bi-encoder pair heads ([u; v; |u-v|; u*v]) with multiple
negatives ranking loss (scale 20, in-batch negatives, positive pairs only, no text twice in a
batch) added to the Quora and STS losses."""

from configs import default


def get_config(preset: str = ""):
    c = default.get_config(preset)
    c.model.pooling = "mean"
    c.model.pair_heads.quora = "bi_concat_diff_prod"
    c.model.pair_heads.sts = "bi_concat_diff_prod"
    c.objective.mnrl.tasks = ("quora", "sts")
    c.objective.mnrl.weight = 1.0
    return c
