"""Seed 004's recipe with its task-specific top layers trained at the encoder's learning rate
(5e-5) instead of the heads' (5e-4): at the heads' rate the STS head collapsed (docs/results.md)."""

from configs import seed004_low_rank_top


def get_config(preset: str = ""):
    c = seed004_low_rank_top.get_config(preset)
    c.optimizer.top_layer_lr = 5e-5
    return c
