"""SMART on every task together with PCGrad in the same step (seed 002 ran out of memory
trying): all tasks per step (Method 2), lambda_s = 1, mu = 1 with the moving-average teacher."""

from configs import default


def get_config(preset: str = ""):
    c = default.pooler_recipe_config(preset)
    c.schedule.kind = "all_tasks_until_largest"
    c.optimizer.combiner = "pcgrad"
    c.objective.smart.tasks = ("sst", "quora", "sts")
    return c
