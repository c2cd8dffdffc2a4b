"""The default model with PCGrad: every task in every step (until the largest is done)."""

from configs import default


def get_config(preset: str = ""):
    c = default.get_config(preset)
    # The reports' sentence vector (BERT's pooler); the MiniLM default mean-pools.
    c.model.pooling = "pooler"
    c.schedule.kind = "method2"
    c.optimizer.combiner = "pcgrad"
    return c
