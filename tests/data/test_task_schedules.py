"""Schedules against hand-computed plans (../shared/docs/algorithms.md)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from mtbert_jax.data.task_schedules import KINDS, Schedule, ScheduleConfig

SIZES = {"sst": 100, "quora": 1000, "sts": 60}  # batches of 10: 10, 100, 6


def _plan(kind, epoch=0, num_epochs=3, sizes=SIZES, **kw):
    schedule = Schedule(ScheduleConfig(kind=kind, batch_size=10, **kw), sizes, num_epochs)
    return schedule, schedule.plan(epoch)


def _counts(plan):
    return Counter(t for step in plan for t in step)


def test_sequential_is_task_after_task():
    _, plan = _plan("sequential")
    assert plan == [("sst",)] * 10 + [("quora",)] * 100 + [("sts",)] * 6


def test_round_robin_cycles_until_the_largest_is_done():
    _, plan = _plan("round_robin")
    assert plan[:4] == [("sst",), ("quora",), ("sts",), ("sst",)]
    assert _counts(plan) == {"sst": 100, "quora": 100, "sts": 100}


def test_all_tasks_scaled_batches_and_loss_weights():
    schedule, plan = _plan("all_tasks_scaled_batches")
    steps = math.ceil(1000 / 10)
    assert len(plan) == steps and all(step == ("sst", "quora", "sts") for step in plan)
    assert schedule.batch_sizes() == {"sst": 1, "quora": 10, "sts": 1}  # ceil(N_t / steps)
    assert schedule.loss_weights() == {"sst": 11.0, "quora": 0.2, "sts": 11.0}


def test_all_tasks_until_largest_and_until_smallest_epoch_lengths():
    assert len(_plan("all_tasks_until_largest")[1]) == 100
    assert len(_plan("all_tasks_until_smallest")[1]) == 6
    schedule = _plan("all_tasks_until_smallest")[0]
    assert schedule.all_tasks_per_step and not _plan("annealed")[0].all_tasks_per_step


def test_sampling_probabilities_by_hand():
    sizes = {"sst": 8544, "quora": 141506, "sts": 6041}  # full sizes, as in algorithms.md
    schedule, _ = _plan("annealed", num_epochs=5, sizes=sizes)
    assert schedule.alpha(0) == 1.0 and schedule.alpha(4) == pytest.approx(0.2)
    assert schedule.alpha(2) == pytest.approx(1 - 0.8 * 2 / 4)
    np.testing.assert_allclose(list(schedule.probabilities(0).values()), [.055, .907, .039], atol=1e-3)
    np.testing.assert_allclose(list(schedule.probabilities(4).values()), [.271, .476, .253], atol=1e-3)
    sqrt = _plan("sqrt", sizes=sizes)[0].probabilities(0)
    total = sum(n ** 0.5 for n in sizes.values())
    assert sqrt["sts"] == pytest.approx(6041 ** 0.5 / total)


def test_sampled_frequencies_follow_the_formula():
    sizes = {"a": 20000, "b": 5000}
    schedule, plan = _plan("proportional", sizes=sizes)
    assert len(plan) == 2500  # one pass's worth of steps
    assert _counts(plan)["a"] / len(plan) == pytest.approx(0.8, abs=0.03)
    assert schedule.plan(0) == plan and schedule.plan(1) != plan  # fixed per epoch, new each epoch


def test_weights_remove_or_repeat_tasks():
    _, plan = _plan("sequential", task_weights={"quora": 0, "sts": 2})
    assert _counts(plan) == {"sst": 10, "sts": 12}


def test_oversampling_up_to_k_times_but_not_past_the_largest():
    schedule, plan = _plan("sequential", oversample_max=5)
    assert schedule.sizes == {"sst": 500, "quora": 1000, "sts": 300}
    assert _plan("sequential", oversample_max=50)[0].sizes["sst"] == 1000


def test_iterations_multiplier():
    assert len(_plan("all_tasks_until_smallest", iterations_multiplier=3)[1]) == 18
    assert len(_plan("annealed", iterations_multiplier=2)[1]) == 2 * 116


def test_curriculum_starts_with_the_largest_task():
    schedule, plan = _plan("round_robin", curriculum_epochs=2)
    assert _counts(plan) == {"quora": 100}
    assert set(_counts(schedule.plan(1))) == {"quora"}
    assert set(_counts(schedule.plan(2))) == {"sst", "quora", "sts"}


def test_curriculum_starts_with_the_largest_task_before_oversampling():
    # SST x50 and STS x50 reach Quora's 1000 records: the curriculum still starts with Quora.
    schedule, plan = _plan("round_robin", curriculum_epochs=1, oversample_max=50)
    assert schedule.sizes == {"sst": 1000, "quora": 1000, "sts": 1000}
    assert _counts(plan) == {"quora": 100}


def test_one_by_one_curriculum_adds_a_task_every_k_epochs_largest_first():
    schedule = Schedule(ScheduleConfig(kind="round_robin", batch_size=10, curriculum_epochs=2,
                                       curriculum="one_by_one"), SIZES, 8)
    joined = [set(_counts(schedule.plan(e))) for e in range(7)]
    assert joined == [{"quora"}] * 2 + [{"quora", "sst"}] * 2 + [{"quora", "sst", "sts"}] * 3


@pytest.mark.parametrize("bad", [dict(kind="nope"), dict(batch_size=0), dict(oversample_max=0.5),
                                 dict(curriculum="gradual")])
def test_bad_config(bad):
    with pytest.raises(ValueError):
        ScheduleConfig(**bad)


def test_weights_of_untrained_tasks_are_ignored_and_unknown_tasks_refused():
    # configs/default.py weighs sst, quora and sts; a model of sst and cfimdb still plans.
    schedule, plan = _plan("sequential", sizes={"sst": 100, "cfimdb": 50},
                           task_weights={"sst": 1.0, "quora": 1.0, "sts": 1.0})
    assert plan == [("sst",)] * 10 + [("cfimdb",)] * 5
    with pytest.raises(ValueError, match=r"schedule.task_weights names unknown task\(s\) \['stsb'\]"):
        _plan("sequential", task_weights={"stsb": 1})
    with pytest.raises(ValueError, match="no task left"):
        _plan("sequential", task_weights={"sst": 0, "quora": 0, "sts": 0})


def test_every_kind_plans():
    for kind in KINDS:
        assert _plan(kind)[1]


@pytest.mark.parametrize("alias,kind", [("method1", "all_tasks_scaled_batches"), ("method2", "all_tasks_until_largest"),
                                        ("method3", "all_tasks_until_smallest")])
def test_seed_001_method_names_are_aliases(alias, kind):
    """The report's Method 1-3 name the same kinds, and plan the same steps."""
    assert ScheduleConfig(kind=alias).kind == kind
    assert _plan(alias)[1] == _plan(kind)[1]
