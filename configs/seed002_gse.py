"""Seed 002's best: GSE (a PCGrad update, then a plain summed update, each step) with three
times the smallest-task epoch of iterations, bi-encoder [u; v] pair heads."""

from configs import default


def get_config(preset: str = ""):
    c = default.pooler_recipe_config(preset)
    c.model.pair_heads.quora = "bi_concat"
    c.model.pair_heads.sts = "bi_concat"
    c.schedule.kind = "all_tasks_until_smallest"
    c.schedule.iterations_multiplier = 3.0
    c.optimizer.combiner = "gse"
    if preset == "budget":  # the Results table's budget: 926 steps x 3 tasks = 2,778 task batches
        c.num_epochs = 2
        c.max_steps = 926
    return c
