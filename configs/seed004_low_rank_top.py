"""Seed 004's best: low-rank adapters (d_s = 256) plus a task-specific top layer, small
tasks oversampled up to 5x, a curriculum that starts with Quora alone and brings the smaller
tasks in one per epoch."""

from configs import default


def get_config(preset: str = ""):
    c = default.pooler_recipe_config(preset)
    c.model.adapter = "low_rank_top_layer"
    c.model.adapter_size = 256
    c.schedule.kind = "round_robin"
    c.schedule.oversample_max = 5.0
    c.schedule.curriculum_epochs = 1  # Quora alone, then SST joins, then STS ("gradually")
    c.schedule.curriculum = "one_by_one"
    if preset == "budget":  # the Results table's budget: 2,778 task batches
        c.max_steps = 2778
    return c
