"""Projected Attention Layers (Stickland & Murray 2019): d_s = 204, 6 heads, all layers,
one task per step with annealed sampling, as in the paper."""

from configs import default


def get_config(preset: str = ""):
    c = default.pooler_recipe_config(preset)
    c.model.adapter = "pals"
    c.model.adapter_size = 204
    c.model.adapter_heads = 6
    c.model.adapter_layers = "all"
    c.schedule.kind = "annealed"
    return c
