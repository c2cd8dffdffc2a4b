"""The default model with PCGrad: every task in every step (until the largest is done)."""

from configs import default


def get_config(preset: str = ""):
    c = default.pooler_recipe_config(preset)
    c.schedule.kind = "all_tasks_until_largest"
    c.optimizer.combiner = "pcgrad"
    return c
