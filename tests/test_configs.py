"""Every file in configs/ loads, passes validation and builds its model."""

from __future__ import annotations

import importlib
from pathlib import Path

import jax
import pytest

from mtbert_jax.bert_config import BertConfig
from mtbert_jax.multitask_model import init_model
from mtbert_jax.optimizer import OptimizerConfig
from mtbert_jax.param_groups import count_parameters
from mtbert_jax.schedules import ScheduleConfig
from mtbert_jax.train_loop import model_config_from, validate

CONFIGS = sorted(p.stem for p in (Path(__file__).parents[1] / "configs").glob("*.py") if p.stem != "__init__")


def test_all_recipes_are_here():
    assert {"default", "bert_base", "pals", "pcgrad", "seed001_pcgrad", "seed002_gse",
            "seed003_round_robin_frozen", "seed004_low_rank_top"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_builds_its_model(name, minilm_dir):
    module = importlib.import_module(f"configs.{name}")
    for preset in ("", "quick"):
        config = module.get_config(preset)
        validate(config)
        ScheduleConfig(**config.schedule.to_dict())
        OptimizerConfig(**config.optimizer.to_dict())
    model_config = model_config_from(config)
    # Shapes only (no compute): the real checkpoint's config, or bert-base's for bert_base.
    bert = BertConfig() if name == "bert_base" else BertConfig.from_json_file(minilm_dir / "config.json")
    shapes = jax.eval_shape(lambda: init_model(bert, model_config, jax.random.PRNGKey(0))[1])
    counts = count_parameters(shapes)
    assert counts["bert"] > 0 and all(f"heads_{t}" in counts for t in model_config.tasks)
