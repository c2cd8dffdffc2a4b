"""The default model with PCGrad: every task in every step (until the largest is done)."""

from configs import default


def get_config(preset: str = ""):
    c = default.reports_config(preset)
    c.schedule.kind = "method2"
    c.optimizer.combiner = "pcgrad"
    return c
