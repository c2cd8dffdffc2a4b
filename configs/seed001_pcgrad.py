"""Seed 001's recipe: gradient surgery (PCGrad, summed) on super batches that stop when the
smallest task is exhausted (their Method 3), bi-encoder pair heads."""

from configs import default


def get_config(preset: str = ""):
    c = default.pooler_recipe_config(preset)
    c.model.pair_heads.quora = "bi_concat"
    c.model.pair_heads.sts = "bi_concat"
    c.schedule.kind = "all_tasks_until_smallest"
    c.optimizer.combiner = "pcgrad"
    c.optimizer.pcgrad_reduction = "sum"
    if preset == "budget":  # the Results table's budget: 926 steps x 3 tasks = 2,778 task batches
        c.schedule.iterations_multiplier = 2.0
        c.max_steps = 926
    return c
