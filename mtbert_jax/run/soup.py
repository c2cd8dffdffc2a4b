"""Model soups: one model from the weights of several runs fine-tuned from one checkpoint.

Wortsman et al. 2022 ("Model soups: averaging weights of multiple fine-tuned models improves
accuracy without increasing inference time"): runs that start from the same pretrained weights
stay in one basin, so the mean of their parameters is a model, often better than each.
- uniform: the mean of every run's parameters;
- greedy: the runs in order of their own dev score, best first; each is added to the soup only
  when the soup's dev score does not drop (the paper's recipe: held-out data decides).

The soup is written as a normal workdir (config.json, best/ and checkpoints/, a dev record in
metrics.jsonl) with soup.json saying what went in, so evaluate.py, convert.py and compare.py
work on it. Runs of different architectures, tasks or starting checkpoints are refused: their
parameters do not mean the same thing, even where the shapes agree.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional, Sequence

import jax
import numpy as np

from mtbert_jax.errors import ConfigError
from mtbert_jax.run import atomic
from mtbert_jax.run.checkpointing import Checkpoints, restore_saved
from mtbert_jax.run.evaluate import dev_outputs, score_outputs
from mtbert_jax.run.trained import TrainedModel, load_trained
from mtbert_jax.training.step import TrainState

SOUP_FILE = "soup.json"
KINDS = ("uniform", "greedy")
# Model fields that change how parameters are used, not what they are: runs may differ in them.
_PREDICTION_ONLY = ("symmetric_pairs",)


@dataclasses.dataclass
class Ingredient:
    workdir: Path
    params: dict  # the run's evaluated parameters (the weight average where it kept one)
    dev: dict  # its own dev metrics
    dev_overall: float


def mean_params(trees: Sequence[dict]) -> dict:
    """The element-wise mean, in float64 then back to each leaf's dtype: the same soup whatever
    the order of its ingredients."""
    return jax.tree_util.tree_map(
        lambda *leaves: (sum(np.asarray(x, np.float64) for x in leaves) / len(leaves)).astype(np.asarray(leaves[0]).dtype),
        *trees)


def _architecture(config: dict) -> dict:
    model = {k: v for k, v in config["model"].items() if k not in _PREDICTION_ONLY}
    return {"checkpoint": config["checkpoint"], "model": model}


def check_soupable(workdirs: Sequence[Path], configs: Sequence[dict], params: Sequence[dict]) -> None:
    """Refuses, in one line naming the first difference, runs that do not share an architecture,
    tasks and starting checkpoint."""
    from mtbert_jax.run.config import dotted_leaves

    first = dotted_leaves(_architecture(configs[0]))
    shapes = lambda tree: jax.tree_util.tree_map(np.shape, tree)  # noqa: E731
    for workdir, config, tree in zip(workdirs[1:], configs[1:], params[1:]):
        mine = dotted_leaves(_architecture(config))
        for key in sorted(set(first) | set(mine)):
            if json.dumps(first.get(key), default=str) != json.dumps(mine.get(key), default=str):
                raise ConfigError(f"--workdir {workdir}: {key} is {mine.get(key)!r}, but {workdirs[0]}'s is "
                                  f"{first.get(key)!r}; a soup averages runs of one architecture, tasks and "
                                  "starting checkpoint")
        if shapes(tree) != shapes(params[0]):
            raise ConfigError(f"--workdir {workdir}: its parameters' shapes differ from {workdirs[0]}'s; a soup "
                              "averages runs of one architecture")


def dev_metrics(trained: TrainedModel, params: dict, batch_size: int) -> tuple[dict, float]:
    """Every task's dev metrics with `params` in the model, and the overall score."""
    trained.params = params  # the same compiled predict function: parameters are an argument
    return score_outputs(dev_outputs(trained, batch_size))


def make_soup(workdirs: Sequence[str | Path], out: str | Path, kind: str = "greedy", which: str = "best",
              batch_size: int = 128, log=print) -> dict:
    """Writes the soup of `workdirs` (their `which` checkpoints) as a workdir at `out`; returns
    what soup.json says."""
    workdirs, out = [Path(w) for w in workdirs], Path(out)
    if kind not in KINDS:
        raise ConfigError(f"soup kind {kind!r}: expected one of {KINDS}")
    if len(workdirs) < 2:
        raise ConfigError("a soup needs at least two --workdir")
    if len({w.resolve() for w in workdirs}) < len(workdirs):
        raise ConfigError("--workdir: a run given twice")
    atomic.check_output_directory(out, workdirs)
    saved = [restore_saved(w, which) for w in workdirs]
    configs = [meta["config"] for meta, _, _ in saved]
    params = [TrainState.from_saved(state["train"]).evaluated for _, state, _ in saved]
    check_soupable(workdirs, configs, params)

    # One model scores every run and candidate (the architecture is one): restored and compiled once.
    scorer = load_trained(workdirs[0], which)
    ingredients = []
    for workdir, tree in zip(workdirs, params):
        dev, overall = dev_metrics(scorer, tree, batch_size)
        log(f"{workdir}: dev overall {overall:.4f}")
        ingredients.append(Ingredient(workdir, tree, dev, overall))

    if kind == "uniform":
        chosen = ingredients
        soup = mean_params([i.params for i in chosen])
        dev, overall = dev_metrics(scorer, soup, batch_size)
    else:
        ranked = sorted(ingredients, key=lambda i: -i.dev_overall)  # stable: ties keep the given order
        chosen, soup, dev, overall = [ranked[0]], ranked[0].params, ranked[0].dev, ranked[0].dev_overall
        for candidate in ranked[1:]:
            trial = mean_params([i.params for i in chosen + [candidate]])
            trial_dev, trial_overall = dev_metrics(scorer, trial, batch_size)
            added = trial_overall >= overall
            log(f"greedy soup: with {candidate.workdir} dev overall {trial_overall:.4f} "
                f"({'added' if added else 'left out'}; the soup so far {overall:.4f})")
            if added:
                chosen, soup, dev, overall = chosen + [candidate], trial, trial_dev, trial_overall
    log(f"{kind} soup of {len(chosen)} run(s): dev overall {overall:.4f}")
    summary = {"kind": kind, "checkpoint": which, "dev": dev, "dev_overall": overall,
               "members": [{"workdir": str(i.workdir), "dev_overall": i.dev_overall,
                            "in_soup": any(i is c for c in chosen)} for i in ingredients]}
    base = next(k for k, i in enumerate(ingredients) if i is chosen[0])
    _write_workdir(out, saved[base], soup, summary)
    return summary


def _write_workdir(out: Path, base: tuple[dict, dict, int], soup: dict, summary: dict) -> None:
    """The soup as a workdir: the first ingredient's checkpoint with its parameters (and weight
    average, where kept) replaced by the soup, written beside `out` and renamed into place."""
    meta, state, step = base
    config = meta["config"]
    train = dict(state["train"])
    train["params"] = soup
    if train.get("average") is not None:
        train["average"] = soup
    epochs = config["num_epochs"] + config["frozen_epochs"]
    with atomic.staged_directory(out) as partial:
        atomic.write_text(partial / "config.json", json.dumps(config, indent=2) + "\n")
        checkpoints = Checkpoints(partial)
        checkpoints.save(step, {"train": train, "loader": state["loader"]},
                         {**meta, "best_score": summary["dev_overall"]}, summary["dev_overall"])
        checkpoints.close()
        record = {"step": step, "epoch": epochs, "dev": summary["dev"], "dev_overall": summary["dev_overall"],
                  "final": True}
        atomic.write_text(partial / "metrics.jsonl", json.dumps(record) + "\n")
        atomic.write_text(partial / SOUP_FILE, json.dumps(summary, indent=2) + "\n")
        atomic.replace_directory(partial, out)


def soup_kind(workdir: Path) -> Optional[str]:
    """"uniform soup" / "greedy soup" for a soup's workdir, None for a trained run."""
    path = workdir / SOUP_FILE
    if not path.exists():
        return None
    try:
        return f"{json.loads(path.read_text())['kind']} soup"
    except (ValueError, KeyError):
        return "soup"
