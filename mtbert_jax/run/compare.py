"""Compares training runs: groups workdirs by configuration (the seed left out) and prints each
group's dev metrics and overall score as mean +- standard deviation over its seeds.

python compare.py runs/default_s0 runs/default_s1 runs/pals_s0 ...
python compare.py runs                 # every run directory inside runs/
python compare.py runs --markdown      # the table as markdown (README's Results)
python compare.py runs --ensembles     # and each group's ensemble beside its members' mean

A group's ensemble averages its members' dev outputs (class probabilities, the paraphrase
probability, the STS score) from the checkpoints of their last dev evaluations: the models the
members' own numbers come from. Their outputs are computed once (minutes on a CPU) and kept in
each run's eval/dev-outputs-stepN.npz. A soup (soup.py) is a configuration of its own.

A run's numbers are those of its last dev evaluation (the model a finished run ends with: its
last epoch's, or the one it stopped early at; its dev record says `final`). A run with weight averaging on (optimizer.ema_decay) also counts as a
run of its configuration without it, "NAME (unaveraged)": the average does not change training,
and each dev record also scores the parameters trained. Unfinished runs are listed apart with
how far they got and are not in the means; directories that cannot be read are named with the
reason. The standard deviation is the sample one (n - 1), over seeds; a group of one run says
"1 seed" and has none.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from mtbert_jax.caches import cached_arrays
from mtbert_jax.errors import ConfigError, MtbertError

# Fields that change neither what a run learns nor its dev numbers: runs differing only in these
# are one configuration.
_NOT_THE_RECIPE = ("seed", "data_dir", "cache_dir", "log_every_steps", "checkpoint_every_steps",
                   "keep_checkpoints", "eval_batch_size", "tensorboard", "wandb", "wandb_project", "wandb_name",
                   "profile_start_step", "profile_num_steps")


@dataclasses.dataclass
class Run:
    workdir: Path
    config: dict  # RunConfig as a dict
    dev: dict  # task -> {metric: value} of the last dev evaluation
    overall: float
    epoch: int
    step: int
    epochs: int  # planned
    finished: bool
    seconds: Optional[float]  # run_seconds at the last dev evaluation (runs from before it was logged: None)
    unaveraged: Optional[tuple[dict, float]] = None  # with weight averaging: the trained parameters' (dev, overall)
    is_copy: bool = False  # "NAME (unaveraged)": another view of a run, with no checkpoint of its own
    soup: Optional[str] = None  # "uniform soup" / "greedy soup": the members' configuration, not one of its seeds

    @property
    def recipe(self) -> str:
        """What groups runs as seeds of one configuration (a soup is a configuration of its own)."""
        return recipe(self.config) + (f" [{self.soup}]" if self.soup else "")

    @property
    def seed(self) -> int:
        return int(self.config["seed"])


class NotEvaluatedYet(ValueError):
    """A run that has not finished its first epoch."""


def read_run(workdir: Path) -> Run:
    """A run directory's configuration and last dev evaluation; ValueError says why it cannot."""
    from mtbert_jax.run.config import RunConfig

    config_path, metrics_path = workdir / "config.json", workdir / "metrics.jsonl"
    if not workdir.is_dir():
        raise ValueError("not a directory")
    if not config_path.exists():
        raise ValueError("no config.json (not a run directory, or a run stopped before its data loaded)")
    try:
        config = dataclasses.asdict(RunConfig.from_dict(json.loads(config_path.read_text())))
    except (ValueError, ConfigError, TypeError) as e:
        raise ValueError(f"{config_path}: not a readable run configuration ({e})") from None
    if not metrics_path.exists():
        raise ValueError("no metrics.jsonl yet (the run has not logged a step)")
    from mtbert_jax.run.soup import soup_kind

    last_dev, last_step = None, 0
    for number, line in enumerate(metrics_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{metrics_path}:{number}: not JSON ({e.msg})") from None
        last_step = max(last_step, int(record.get("step", 0)))
        if "dev" in record:
            last_dev = record
    if last_dev is None:
        raise NotEvaluatedYet(f"no dev evaluation yet (logged up to step {last_step})")
    epochs = config["num_epochs"] + config["frozen_epochs"]
    if "final" in last_dev:  # the loop says whether the run ended with this evaluation
        finished = bool(last_dev["final"])
    else:  # a log from before dev records said so (dev at epoch ends only)
        finished = last_dev["epoch"] >= epochs or (config["max_steps"] > 0 and last_dev["step"] >= config["max_steps"])
    unaveraged = ((last_dev["dev_unaveraged"], float(last_dev["dev_unaveraged_overall"]))
                  if "dev_unaveraged" in last_dev else None)
    return Run(workdir, config, last_dev["dev"], float(last_dev["dev_overall"]), int(last_dev["epoch"]),
               int(last_dev["step"]), epochs, finished, last_dev.get("run_seconds"), unaveraged,
               soup=soup_kind(workdir))


_UNAVERAGED = " (unaveraged)"


def with_unaveraged(runs: list[Run]) -> list[Run]:
    """The runs, each with weight averaging followed by the same run as if it had none: same
    training, dev scored on the parameters trained (its time includes the average's small cost)."""
    out = []
    for run in runs:
        out.append(run)
        if run.unaveraged is not None:
            config = copy.deepcopy(run.config)
            config["optimizer"]["ema_decay"] = 0.0
            out.append(dataclasses.replace(run, workdir=run.workdir.with_name(run.workdir.name + _UNAVERAGED),
                                           config=config, dev=run.unaveraged[0], overall=run.unaveraged[1],
                                           unaveraged=None, is_copy=True))
    return out


def find_runs(paths: list[Path]) -> list[Path]:
    """The paths, with a directory that is not a run itself replaced by the runs inside it."""
    found = []
    for path in paths:
        inside = sorted(p.parent for p in path.glob("*/config.json")) if path.is_dir() else []
        found += inside if inside and not (path / "config.json").exists() else [path]
    return found


def recipe(config: dict) -> str:
    """The configuration without the seed, as a stable key."""
    return json.dumps({k: v for k, v in config.items() if k not in _NOT_THE_RECIPE}, sort_keys=True, default=str)


def default_config() -> Optional[dict]:
    """configs/default.py as a RunConfig dict, when this checkout has it."""
    from mtbert_jax.run.config import RunConfig

    path = Path(__file__).resolve().parents[2] / "configs" / "default.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("_default_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dataclasses.asdict(RunConfig.from_dict(module.get_config()))


def describe(config: dict, reference: Optional[dict]) -> str:
    """What sets a configuration apart from configs/default.py ("default" when nothing does)."""
    if reference is None:
        return "-"
    from mtbert_jax.run.config import dotted_leaves

    mine = dotted_leaves({k: v for k, v in config.items() if k not in _NOT_THE_RECIPE})
    base = dotted_leaves(reference)
    changed = [f"{k}={_short(mine.get(k))}" for k in sorted(set(mine) | set(base))
               if k.split(".")[0] not in _NOT_THE_RECIPE and json.dumps(mine.get(k), default=str) != json.dumps(base.get(k), default=str)]
    return ", ".join(changed) if changed else "default"


def group_name(workdirs: list[Path]) -> str:
    """The runs' directory name without a seed suffix (`pals_s1`, `pals-seed2` -> `pals`), when
    they share one; else their names joined."""
    def stem(name: str) -> str:
        suffix = _UNAVERAGED if name.endswith(_UNAVERAGED) else ""
        name = name.removesuffix(suffix)
        return (re.sub(r"[_-]?(s|seed)?\d+$", "", name) or name) + suffix

    stems = sorted({stem(p.name) for p in workdirs})
    return stems[0] if len(stems) == 1 else " / ".join(sorted({p.name for p in workdirs}))


def _short(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def encoder_free_parameters(config: dict) -> Optional[int]:
    """Parameters beyond the encoder (heads, adapters, the objective's own), counted from the
    model's shapes (nothing is initialised); None when the checkpoint's directory is not here."""

    from mtbert_jax.checkpoints.hf import resolve_checkpoint_dir
    from mtbert_jax.model.bert_config import BertConfig
    from mtbert_jax.run.build import concrete_dtype, encoder_config, parameter_shapes
    from mtbert_jax.run.config import RunConfig
    from mtbert_jax.training.param_groups import count_parameters

    run, _ = concrete_dtype(RunConfig.from_dict(config))
    try:
        bert_config = BertConfig.from_json_file(resolve_checkpoint_dir(run.checkpoint) / "config.json")
    except Exception:  # a user's checkpoint directory that is not on this machine
        return None
    shapes = parameter_shapes(run, encoder_config(run, bert_config))
    counts = count_parameters({**shapes, **run.objective.extra_params(run.model.tasks)})
    return sum(n for name, n in counts.items() if name != "bert")


def _spread(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _duration(seconds: list[Optional[float]]) -> str:
    known = [s for s in seconds if s is not None]
    if not known:
        return "-"

    def fmt(s):
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m" if s >= 3600 else f"{int(s // 60)}m{int(s % 60):02d}s"

    text = fmt(statistics.mean(known))
    if len(known) > 1:
        text += f" ± {fmt(statistics.stdev(known))}"
    return text + ("" if len(known) == len(seconds) else f" ({len(known)} of {len(seconds)} timed)")


def _metric(scores: dict) -> tuple[str, float]:
    name, value = next(iter(scores.items()))  # each task's first metric is its score (accuracy, Pearson r)
    return name, float(value)


def cached_dev_outputs(run: Run, batch_size: int = 128) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{task: (head outputs, gold labels)} on the dev files, from the checkpoint of the run's last
    dev evaluation; computed once, then read from eval/dev-outputs-stepN.npz."""
    cache = run.workdir / "eval" / f"dev-outputs-step{run.step}.npz"

    def compute() -> dict[str, np.ndarray]:
        from mtbert_jax.run.evaluate import dev_outputs
        from mtbert_jax.run.trained import load_trained

        print(f"{run.workdir}: computing its dev outputs at step {run.step} (once)", file=sys.stderr)
        outputs = dev_outputs(load_trained(run.workdir, str(run.step)), batch_size)
        return {f"{t}/{part}": a for t, pair in outputs.items() for part, a in zip(("outputs", "gold"), pair)}

    saved = cached_arrays(cache, json.dumps({"step": run.step, "tasks": sorted(run.dev)}), compute)
    return {task: (saved[f"{task}/outputs"], saved[f"{task}/gold"]) for task in run.dev}


def ensemble_dev(members: list[Run]) -> tuple[dict, float]:
    """The dev metrics and overall score of the members' averaged outputs."""
    from mtbert_jax.run.evaluate import score_outputs
    from mtbert_jax.tasks import TASKS

    each = [cached_dev_outputs(run) for run in members]
    averaged = {}
    for task in members[0].dev:
        gold = each[0][task][1]
        if any(not np.array_equal(e[task][1], gold) for e in each[1:]):
            raise ValueError(f"{task}: the members were evaluated on different dev files")
        averaged[task] = (TASKS[task].kind.average([e[task][0] for e in each]), gold)
    return score_outputs(averaged)


def compare(runs: list[Run], reference: Optional[dict], count_parameters: bool = True,
            ensembles: bool = False) -> list[dict]:
    """One row per configuration (finished runs only), most runs first, then best overall; with
    `ensembles`, a group of several runs also gets its ensemble's dev overall."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        if run.finished:
            groups.setdefault(run.recipe, []).append(run)
    rows = []
    for members in groups.values():
        tasks = list(members[0].dev)
        seeds = sorted(r.seed for r in members)
        row = {"name": group_name([r.workdir for r in members]),
               "configuration": describe(members[0].config, reference)
               + (f" ({members[0].soup})" if members[0].soup else ""),
               "seeds": f"{len(members)} ({', '.join(map(str, seeds))})" if len(members) > 1 else f"1 seed ({seeds[0]})",
               "overall": _spread([r.overall for r in members]),
               "overall_mean": statistics.mean(r.overall for r in members),
               "time": _duration([r.seconds for r in members]),
               "extra_parameters": None}
        if len(set(seeds)) < len(seeds):
            row["seeds"] += ", a seed twice"
        for task in tasks:
            name, _ = _metric(members[0].dev[task])
            row[f"{task} {name}"] = _spread([_metric(r.dev[task])[1] for r in members if task in r.dev])
        if count_parameters:
            row["extra_parameters"] = encoder_free_parameters(members[0].config)
        if ensembles and len(members) > 1 and not any(r.is_copy for r in members):
            try:
                row["ensemble"] = f"{ensemble_dev(members)[1]:.3f}"
            except (ValueError, MtbertError, OSError) as e:
                row["ensemble"] = "-"
                print(f"{row['name']}: no ensemble ({e})", file=sys.stderr)
        rows.append(row)
    return sorted(rows, key=lambda r: (-int(r["seeds"].split()[0]), -r["overall_mean"]))


def render(rows: list[dict], markdown: bool) -> str:
    metric_columns = []
    for row in rows:
        metric_columns += [k for k in row if " " in k and k not in metric_columns]
    ensembles = any("ensemble" in row for row in rows)
    header = ["run", "seeds", *metric_columns, "overall", *(["ensemble overall"] if ensembles else []),
              "training time", "params beyond encoder"]
    table = [[row["name"], row["seeds"], *[row.get(k, "-") for k in metric_columns], row["overall"],
              *([row.get("ensemble", "-")] if ensembles else []),
              row["time"], "-" if row["extra_parameters"] is None else f"{row['extra_parameters']:,}"] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in table])
    widths = [max(len(str(c)) for c in column) for column in zip(header, *table)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in [header, *table])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python compare.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", nargs="+", type=Path, help="run directories, or directories holding runs")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--no-parameters", action="store_true", help="skip counting parameters (faster)")
    parser.add_argument("--ensembles", action="store_true",
                        help="each group's ensemble (averaged dev outputs) beside its members' mean")
    args = parser.parse_args(argv)
    from mtbert_jax.run import command

    return command.ending(lambda: _compare(args))


def _compare(args: argparse.Namespace) -> int:
    runs, not_evaluated, unreadable = [], [], []
    for path in find_runs(args.workdirs):
        try:
            runs.append(read_run(path))
        except NotEvaluatedYet as e:
            not_evaluated.append(f"unfinished: {path}: {e}")
        except ValueError as e:
            unreadable.append(f"not read: {path}: {e}")
    if not runs:
        for line in not_evaluated + unreadable:
            print(line, file=sys.stderr)
        print("error: no run could be read", file=sys.stderr)
        return 2
    rows = compare(with_unaveraged(runs), default_config(), not args.no_parameters, args.ensembles)
    if rows:
        print(render(rows, args.markdown))
        print()
        for row in rows:
            print(f"{row['name']}: {row['configuration']}")
    else:
        print("no finished run yet")
    for run in runs:
        if not run.finished:
            print(f"unfinished: {run.workdir} (seed {run.seed}): epoch {run.epoch} of {run.epochs}, step {run.step}; "
                  f"dev overall so far {run.overall:.4f} (not in the table)")
    for run in runs:
        if run.finished:
            print(f"{run.workdir}: seed {run.seed}, dev overall {run.overall:.4f}"
                  + ("" if run.seconds is None else f", {run.seconds / 60:.1f} min"))
    for line in not_evaluated + unreadable:
        print(line)
    return 0
