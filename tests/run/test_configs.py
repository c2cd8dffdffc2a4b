"""Every file in configs/ loads, passes validation and builds its model; the defaults are written
once (configs/default.py's sections are the dataclasses'), every field has a comment, and saved
configs of older runs still load."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import jax
import pytest

from configs import default
from mtbert_jax.data.task_schedules import ScheduleConfig
from mtbert_jax.errors import ConfigError
from mtbert_jax.model.bert_config import BertConfig
from mtbert_jax.model.config import ModelConfig
from mtbert_jax.model.multitask import init_model
from mtbert_jax.run.build import check_family
from mtbert_jax.run.config import RunConfig, upgrade
from mtbert_jax.training.objectives import MnrlConfig, ObjectiveConfig
from mtbert_jax.training.optimizer import OptimizerConfig
from mtbert_jax.training.param_groups import count_parameters
from mtbert_jax.training.rdrop import RDropConfig
from mtbert_jax.training.smart import SmartConfig

CONFIG_DIR = Path(__file__).parents[2] / "configs"
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "__init__")
STAND_INS = {"bert_base": BertConfig(),
             "mpnet": BertConfig.from_hf_dict({"model_type": "mpnet", "max_position_embeddings": 514,
                                               "layer_norm_eps": 1e-5, "vocab_size": 30527})}


def test_all_recipes_are_here():
    assert {"default", "bert_base", "mpnet", "pals", "pcgrad", "seed001_pcgrad", "seed002_gse",
            "seed003_round_robin_frozen", "seed004_low_rank_top", "seed004_low_rank_top_lr"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_builds_its_model(name, minilm_dir):
    module = importlib.import_module(f"configs.{name}")
    for preset in ("", "quick", "budget"):
        run = RunConfig.from_dict(module.get_config(preset))
    # Shapes only (no compute): the real checkpoint's config, or a stand-in of the same shape for
    # those that are not always here (bert-base; all-mpnet-base-v2 unless setup.sh --models ran).
    bert = STAND_INS[name] if name in STAND_INS else BertConfig.from_json_file(minilm_dir / "config.json")
    check_family(run, bert)
    shapes = jax.eval_shape(lambda: init_model(bert, run.model, jax.random.PRNGKey(0))[1])
    counts = count_parameters(shapes)
    with_head = [t for t in run.model.tasks if run.model.pair_head(t) != "bi_cosine"]  # parameter-free
    assert counts["bert"] > 0 and all(f"heads_{t}" in counts for t in with_head)


def test_the_default_config_sections_are_the_dataclasses_defaults():
    """Written once: configs/default.py's sections come from the dataclasses, so code that
    builds a section directly (tests, benchmarks) gets what a run gets."""
    run = RunConfig.from_dict(default.get_config())
    assert run.model == ModelConfig()
    assert run.schedule == ScheduleConfig()
    assert run.optimizer == OptimizerConfig()
    assert run.objective == ObjectiveConfig()
    assert run.objective.smart == SmartConfig() and run.objective.mnrl == MnrlConfig()


def test_unset_section_fields_take_a_value_of_their_type_from_the_command_line():
    c = default.get_config()
    assert c.optimizer.top_layer_lr is None and c.model.encoder_dropout is None
    c.optimizer.top_layer_lr, c.model.encoder_dropout, c.optimizer.pcgrad_reduction = 5e-5, 0.0, "mean"
    run = RunConfig.from_dict(c)
    assert (run.optimizer.top_layer_lr, run.model.encoder_dropout, run.optimizer.pcgrad_reduction) == (5e-5, 0.0, "mean")
    with pytest.raises(TypeError):
        default.get_config().optimizer.top_layer_lr = "fast"


def _uncommented(lines: list[str], field: str) -> list[str]:
    """Names of the lines matching `field` (a regex with one group) with no comment on them or
    on the line above."""
    found = []
    for i, line in enumerate(lines):
        match = re.match(field, line)
        if match and "#" not in line and not lines[i - 1].strip().startswith("#"):
            found.append(match.group(1))
    return found


def test_every_field_of_the_default_config_has_a_comment():
    lines = (CONFIG_DIR / "default.py").read_text().splitlines()
    body = lines[next(i for i, line in enumerate(lines) if line.startswith("def get_config")):]
    body = body[:next(i for i, line in enumerate(body) if line.strip().startswith("if preset"))]
    assert not _uncommented(body, r"\s+c\.([\w.]+) = (?!ml_collections\.ConfigDict\(\)$)")
    for section in (ModelConfig, ScheduleConfig, ObjectiveConfig, SmartConfig, MnrlConfig, RDropConfig,
                    OptimizerConfig):
        source = inspect.getsource(section).splitlines()
        declared = {m.group(1) for line in source if (m := re.match(r"    (\w+): ", line))}
        assert {f.name for f in dataclasses.fields(section)} <= declared
        uncommented = _uncommented(source, r"    (\w+): ")
        assert not uncommented, f"{section.__name__}: {uncommented}"


def test_budget_presets_train_the_results_tables_budget():
    from configs import seed001_pcgrad, seed002_gse, seed003_round_robin_frozen, seed004_low_rank_top

    assert RunConfig.from_dict(seed001_pcgrad.get_config("budget")).max_steps == 926
    gse = RunConfig.from_dict(seed002_gse.get_config("budget"))
    assert (gse.max_steps, gse.num_epochs) == (926, 2)
    assert RunConfig.from_dict(seed003_round_robin_frozen.get_config("budget")).num_epochs == 2
    assert RunConfig.from_dict(seed004_low_rank_top.get_config("budget")).max_steps == 2778


def test_unknown_fields_are_refused_by_name():
    c = default.get_config().to_dict()
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['foo'\]"):
        RunConfig.from_dict({**c, "foo": 1})
    with pytest.raises(ConfigError, match=r"optimizer has no field\(s\) \['encoder_rate'\]"):
        RunConfig.from_dict({**c, "optimizer": {**c["optimizer"], "encoder_rate": 1e-5}})
    with pytest.raises(ConfigError, match=r"objective.smart has no field\(s\) \['lambda'\]"):
        RunConfig.from_dict({**c, "objective": {**c["objective"], "smart": {"lambda": 1.0}}})
    with pytest.raises(ConfigError, match="checkpoint_every_steps=0: expected a number > 0"):
        RunConfig.from_dict({**c, "checkpoint_every_steps": 0})


def test_a_config_saved_before_the_objective_group_still_loads():
    """Runs written before smart, mnrl, sts_loss and uncertainty_weighting moved under
    `objective` (their config.json and checkpoints have them at the top level)."""
    c = default.get_config().to_dict()
    old = {k: v for k, v in c.items() if k != "objective"}
    old |= {"smart": {**c["objective"]["smart"], "tasks": ["sst"]}, "mnrl": c["objective"]["mnrl"],
            "sts_loss": "mse", "uncertainty_weighting": True}
    run = RunConfig.from_dict(old)
    assert run.objective.smart.tasks == ("sst",) and run.objective.uncertainty_weighting
    assert "smart" not in upgrade(old) and upgrade(c) == c
    # all_tasks_until_smallest carried its passes over epochs then: a resumed old run goes on doing so.
    old["schedule"] = {k: v for k, v in c["schedule"].items() if k != "carry_over_passes"}
    assert RunConfig.from_dict(old).schedule.carry_over_passes
    assert not RunConfig.from_dict(c).schedule.carry_over_passes
    # Seed 001's names for the all_tasks_* kinds, and the field's earlier name, still load.
    named = {**c, "schedule": {**c["schedule"], "kind": "method3", "method3_carry_over": False}}
    del named["schedule"]["carry_over_passes"]
    schedule = RunConfig.from_dict(named).schedule
    assert schedule.kind == "all_tasks_until_smallest" and not schedule.carry_over_passes
    assert RunConfig.from_dict({**named, "schedule": {**named["schedule"], "method3_carry_over": True}}
                               ).schedule.carry_over_passes
    # Runs from before packing trained padded; packed runs from before balanced batches had a
    # pack_row_step, which the rows no longer need.
    assert not RunConfig.from_dict({k: v for k, v in c.items() if k != "packing"}).packing
    assert RunConfig.from_dict({**c, "pack_row_step": 2}) == RunConfig.from_dict(c)
    # ... and what a run saves reads back to the same configuration.
    assert RunConfig.from_dict(dataclasses.asdict(run)) == run
