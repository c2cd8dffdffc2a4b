"""Seed 002's Extension 2a: GSE with the cosine embedding loss on STS's two sentence vectors
(label thresholded at 2.5) and no STS linear layer: STS is scored 2.5 (1 + cos(u, v))."""

from configs import seed002_gse


def get_config(preset: str = ""):
    c = seed002_gse.get_config(preset)
    c.model.pair_heads.sts = "bi_cosine"
    c.objective.sts_loss = "cosine_embedding"
    return c
