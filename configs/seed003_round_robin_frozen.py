"""Seed 003's best: round-robin multi-task training with a hidden layer shared by the
paraphrase and similarity heads, then extra epochs with the encoder frozen."""

from configs import default


def get_config(preset: str = ""):
    c = default.pooler_recipe_config(preset)
    c.model.pair_heads.quora = "bi_concat"
    c.model.pair_heads.sts = "bi_concat"
    c.model.shared_pair_hidden = True
    c.schedule.kind = "round_robin"
    c.frozen_epochs = 1
    if preset == "budget":  # the Results table's budget: two whole round-robin epochs (2,994 batches)
        c.num_epochs = 2
    return c
