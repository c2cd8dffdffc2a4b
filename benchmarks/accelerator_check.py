"""The accelerator check: one command for a lent GPU host, each part one JSON line: the devices
and libraries, the default recipe end to end, the train step against PyTorch, the host's time
per step, dev-set evaluation speed.

python benchmarks/accelerator_check.py --checkpoint carry/minilm-float16 --out check.md   # a GPU host
python benchmarks/accelerator_check.py --quick                      # any CPU, a minute or two: every part, shrunk
python benchmarks/accelerator_check.py --parts device train_step    # some parts, in the order given
python benchmarks/accelerator_check.py --eval-file dev:sts=my-sts.csv --eval-file test:sst=my-sst.csv
bash benchmarks/on_device.sh                                        # on the GPU host, with carry/ (docs/accelerators.md)

Parts, each in child processes (this process never starts jax: on an accelerator it would hold
memory the children need):
  device          the devices jax sees; jax, jaxlib, flax, optax, orbax, transformers, torch
                  versions; torch's device; CUDA (plugins, driver, torch's); the CPU
  default_recipe  configs/default.py on --checkpoint in a fresh temporary workdir with empty data
                  and XLA caches: train.py (load, train, dev evaluation after each epoch, best/),
                  then evaluate.py on best/ writing the dev predictions, and once more on the
                  --eval-file files; the wall time split into load, compile, train and evaluate
                  (split_train_wall_time says how), the dev scores, the steps
  train_step      train_step.py: bert-base shape (random weights), seq 128, batch 32 and 256, in
                  bfloat16 and float32, against PyTorch on the same device; the fraction of the
                  device's datasheet peak where mtbert_jax.training.flops.DEVICE_PEAKS knows
                  the device
  host_overhead   host_overhead.py: the main thread's CPU time per step of the real loop
  inference       inference.py on --checkpoint in bfloat16 (what "auto" picks on an accelerator)

A part that fails is reported in its JSON line ("status": "error" and the error; what it had
measured stays) and the next part runs; a part not started before --deadline is "skipped". The
exit status is 1 when any part did not end "ok". A markdown summary follows the JSON lines (and
is written to --out FILE.md). PyTorch's sides are left out, the JSON saying why, where torch is
not installed or, on an accelerator, has no CUDA.

--quick runs the same parts on a CPU: the recipe with a tiny random encoder (2 layers, hidden
32) carrying --checkpoint's vocabulary, on task files cut to their first 256 training and 64 dev
records, 48 training records per task, one epoch; train_step on a 2-layer hidden-32 shape at
seq 16, batch 4, bfloat16 only; host_overhead for 20 steps; inference on the tiny encoder, batch 16; XLA's
backend optimisations off. Its numbers mean nothing: it proves that every part still runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from benchmarks import common

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
PARTS = ("device", "default_recipe", "train_step", "host_overhead", "inference")
# The course's task files of the default recipe's tasks (mtbert_jax/tasks.py names them too; not
# imported here, so that this process stays free of jax).
TASK_FILES = {"sst": "ids-sst-{split}.csv", "quora": "quora-{split}.csv", "sts": "sts-{split}.csv"}
QUICK_TRAIN_RECORDS, QUICK_DEV_RECORDS = 256, 64
# The default recipe shrunk to seconds: 48 records per task, batch 16 (9 steps), a log record
# every 2 steps (enough logging windows for a steady step time).
QUICK_RECIPE = ["--config.num_epochs=1", "--config.max_train_records=48", "--config.schedule.batch_size=16",
                "--config.log_every_steps=2", "--config.max_length=64", "--config.eval_batch_size=64"]
# train.py prints this line just before its first step, and one of these after each dev evaluation.
PLAN_LINE = re.compile(r"^\d+ tasks, .* device\(s\)$")
DEV_LINE = re.compile(r"^epoch \d+: dev (?!without)")


class PartError(Exception):
    """A part's failure; `partial` is what it had measured before failing."""

    def __init__(self, message: str, partial: dict | None = None):
        super().__init__(message)
        self.partial = partial or {}


class DeadlinePassed(PartError):
    """A child not started because --deadline had passed: a part that ends on it is "skipped"."""


@dataclasses.dataclass
class Child:
    """A finished child process: its stdout lines with the seconds since its start at which each
    arrived, its wall time, and the end of its stderr."""

    label: str
    returncode: int
    seconds: float
    lines: list[tuple[float, str]]
    stderr_path: Path
    timed_out: bool = False

    def stderr_tail(self, lines: int = 12) -> str:
        text = self.stderr_path.read_text(errors="replace")[-6000:] if self.stderr_path.exists() else ""
        # tqdm redraws its bar with carriage returns: each redraw is a line here.
        kept = [line.rstrip() for line in re.split(r"[\r\n]", text) if line.strip()]
        return "\n".join(kept[-lines:])

    def check(self, what: str, partial: dict | None = None) -> None:
        if self.timed_out:
            raise PartError(f"{what}: stopped at the deadline after {self.seconds:.0f} s", partial)
        if self.returncode != 0:
            raise PartError(f"{what} exited with status {self.returncode}: {self.stderr_tail()}", partial)

    def json(self) -> dict:
        """The last JSON object the child printed (the benchmark scripts' result line)."""
        for _, line in reversed(self.lines):
            if line.startswith("{"):
                return json.loads(line)
        raise PartError(f"{self.label}: printed no JSON line")


class Check:
    """The run's settings, its temporary directory, the children it starts and the fixtures the
    quick parts share."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="accelerator-check-"))
        self.logs = args.logs or self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + args.deadline if args.deadline else None
        self.children = 0
        self.probe: dict | None = None  # the device part's findings, reused by later parts
        self._tiny_checkpoint: Path | None = None

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def data_dir(self) -> Path:
        """The task files: --data-dir, or with --quick the first records of each, cut once."""
        if not self.args.quick:
            return self.args.data_dir
        cut = self.root / "data"
        if not cut.is_dir():
            cut.mkdir()
            for name in TASK_FILES.values():
                for split, records in (("train", QUICK_TRAIN_RECORDS), ("dev", QUICK_DEV_RECORDS)):
                    source = self.args.data_dir / name.format(split=split)
                    # One record a line (the readers refuse a quoted field over several lines), after a header.
                    with open(source, encoding="utf-8") as f:
                        head = [line for _, line in zip(range(records + 1), f)]
                    (cut / source.name).write_text("".join(head), encoding="utf-8")
        return cut

    def tiny_checkpoint(self) -> Path:
        """--quick's encoder: 2 layers, hidden 32, random weights, --checkpoint's vocabulary."""
        if self._tiny_checkpoint is None:
            out = self.root / "tiny-checkpoint"
            child = self.run("tiny-checkpoint", [sys.executable, __file__, "--side", "tiny-checkpoint",
                                                 "--checkpoint", self.args.checkpoint, "--side-out", str(out)])
            child.check("writing the tiny checkpoint")
            self._tiny_checkpoint = out
        return self._tiny_checkpoint

    def checkpoint(self) -> str:
        return str(self.tiny_checkpoint()) if self.args.quick else self.args.checkpoint

    def env(self, **extra: str) -> dict:
        """Every child's environment: the benchmarks' (malloc tunables), the project importable
        without an install, the data, caches of this run only, stdout unbuffered (the recipe's
        split is timed by when its lines arrive)."""
        env = common.side_environment()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
        env |= {"MTBERT_DATA_DIR": str(self.data_dir()), "MTBERT_CACHE_DIR": str(self.root / "cache"),
                "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **extra}
        if self.args.quick:
            # Compiling is most of --quick's time and its numbers mean nothing: XLA's backend
            # optimisations off (about a third less CPU time on a 2-core machine).
            env["XLA_FLAGS"] = " ".join(filter(None, [env.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]))
        return env

    def run(self, label: str, command: list[str], env: dict | None = None) -> Child:
        """Runs a child in the repository root in its own process group (so that the deadline
        stops its children too), its stdout read line by line as it arrives."""
        timeout = None
        if self.deadline is not None:
            timeout = self.deadline - time.monotonic()
            if timeout <= 0:
                raise DeadlinePassed(f"{label}: not started, the deadline had passed")
        self.children += 1
        stem = self.logs / f"{self.children:02d}-{label}"
        print(f"[accelerator_check] {label}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
        lines: list[tuple[float, str]] = []
        start = time.monotonic()
        with open(stem.with_suffix(".err"), "w") as stderr:
            process = subprocess.Popen(command, cwd=ROOT, env=env or self.env(), stdout=subprocess.PIPE,
                                       stderr=stderr, text=True, start_new_session=True)

            def read():
                for line in process.stdout:
                    lines.append((time.monotonic() - start, line.rstrip("\n")))

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            timed_out = False
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                timed_out = True
            reader.join()
        seconds = time.monotonic() - start
        stem.with_suffix(".out").write_text("".join(f"{t:9.3f} {line}\n" for t, line in lines))
        return Child(label, process.returncode, seconds, lines, stem.with_suffix(".err"), timed_out)

    def pytorch(self) -> tuple[bool, str]:
        """(whether to run PyTorch's sides, what the JSON says about PyTorch)."""
        if importlib.util.find_spec("torch") is None:
            return False, "PyTorch: not installed"
        if self.probe is None:
            child = self.run("probe", [sys.executable, __file__, "--side", "probe"])
            child.check("probing jax's and torch's devices")
            self.probe = child.json()
        platform, torch_device = self.probe["jax_platform"], self.probe["torch_device"]
        if platform != "cpu" and torch_device == "cpu":
            return False, f"PyTorch: installed without CUDA (torch {self.probe['torch']}): left out on {platform}"
        return True, f"PyTorch {self.probe['torch']} on {torch_device}"


# --------------------------------------------------------------------------------------- parts

def part_device(check: Check) -> dict:
    child = check.run("device", [sys.executable, __file__, "--side", "device"])
    child.check("the device probe")
    info = child.json()
    check.probe = {"jax_platform": info["jax_platform"], "torch_device": info["torch_device"],
                   "torch": info["versions"].get("torch")}
    return info


def part_default_recipe(check: Check) -> dict:
    args = check.args
    checkpoint = check.checkpoint()
    workdir, kept = check.root / "recipe", check.logs / "default_recipe"
    overrides = [f"--config.checkpoint={checkpoint}", *(QUICK_RECIPE if args.quick else [])]
    result: dict = {"checkpoint": (f"tiny random encoder with the vocabulary of {args.checkpoint}" if args.quick
                                   else checkpoint),
                    "config": "configs/default.py", "overrides": overrides, "data_dir": str(check.data_dir())}
    # Empty caches of its own: the tokenized data and XLA's compilations are a first run's.
    env = check.env(MTBERT_CACHE_DIR=str(check.root / "recipe-cache"))
    train = check.run("train", [sys.executable, "train.py", "--config", "configs/default.py", "--workdir",
                                str(workdir), *overrides], env)
    for name in ("metrics.jsonl", "config.json"):
        if (workdir / name).exists():
            kept.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(workdir / name, kept / name)
    train.check("train.py", result)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    devs = [r for r in records if "dev_overall" in r]
    best = max(devs, key=lambda r: r["dev_overall"])  # the first of equals, as best/ keeps
    result |= {"compute_dtype": json.loads((workdir / "config.json").read_text())["compute_dtype"],
               "steps": records[-1]["step"], "epochs": len(devs), "best_step": best["step"],
               "dev": {t: {k: round(v, 4) for k, v in m.items()} for t, m in best["dev"].items()},
               "dev_overall": round(best["dev_overall"], 4),
               "dev_overall_by_epoch": [round(r["dev_overall"], 4) for r in devs]}
    try:
        seconds, derivation, rates = split_train_wall_time(train.lines, records, train.seconds)
    except ValueError as e:
        raise PartError(f"train.py's output: {e}", result) from None
    result |= rates

    evaluate = check.run("evaluate", [sys.executable, "evaluate.py", "--workdir", str(workdir), "--checkpoint",
                                      "best", "--split", "dev", "--out", str(workdir / "eval")], env)
    copy_tree(workdir / "eval", kept / "eval", ("metrics.json", "predictions"))
    seconds |= {"evaluate_py": round(evaluate.seconds, 2),
                "evaluate": round(seconds["dev_evaluation"] + evaluate.seconds, 2)}
    result |= {"seconds": seconds, "derivation": derivation}
    evaluate.check("evaluate.py", result)
    scores = json.loads((workdir / "eval" / "metrics.json").read_text())
    result["evaluate_py_dev_overall"] = round(scores["dev"]["overall"], 4)
    # evaluate.py on best/ recomputes the best epoch's dev record: the two should agree.
    result["evaluate_py_vs_training_dev_max_difference"] = max(
        abs(scores["dev"][t][k] - v) for t, m in best["dev"].items() for k, v in m.items())
    result["predictions"] = sorted(p.name for p in (workdir / "eval" / "predictions").glob("*.csv"))

    if args.eval_file:
        splits = sorted({spec.split(":", 1)[0] for spec in args.eval_file})
        files = [a for spec in args.eval_file for a in ("--task-file", spec)]
        extra = check.run("evaluate-files", [sys.executable, "evaluate.py", "--workdir", str(workdir),
                                             "--checkpoint", "best", "--split", splits[0] if len(splits) == 1
                                             else "both", *files, "--out", str(workdir / "eval-files")], env)
        copy_tree(workdir / "eval-files", kept / "eval-files", ("metrics.json", "predictions"))
        seconds["evaluate_files_py"] = round(extra.seconds, 2)
        extra.check("evaluate.py --task-file", result)
        scores = json.loads((workdir / "eval-files" / "metrics.json").read_text())
        result["eval_files"] = {}
        for spec in args.eval_file:
            split, rest = spec.split(":", 1)
            task = rest.split("=", 1)[0]
            metrics = scores.get(split, {}).get(task)
            result["eval_files"][spec] = ({k: round(v, 4) for k, v in metrics.items() if k in
                                           ("accuracy", "macro_f1", "pearson", "spearman")}
                                          if metrics else "predictions only (no labels)")
    return result


def part_train_step(check: Check) -> dict:
    from mtbert_jax.training import flops as model_flops  # no jax: this process never starts it

    quick = check.args.quick
    shape, seq, batches, steps = ("tiny", 16, (4,), 2) if quick else ("bert-base", 128, (32, 256), 10)
    dtypes = ("bfloat16",) if quick else ("bfloat16", "float32")
    with_torch, pytorch = check.pytorch()
    result: dict = {"pytorch": pytorch, "shape": shape, "seq": seq, "steps": steps, "results": [],
                    "matmul_limit": {}}
    failures = []
    for dtype in dtypes:
        try:
            child = check.run(f"train_step-{dtype}", [
                sys.executable, str(BENCHMARKS / "train_step.py"), "--shapes", shape, "--seqs", str(seq),
                "--batches", *map(str, batches), "--dtype", dtype, "--steps", str(steps),
                *([] if with_torch else ["--no-torch"])])
            child.check(f"train_step.py --dtype {dtype}")
            measured = child.json()
        except PartError as e:
            failures.append(str(e))
            continue
        platform, kind = measured["machine"]["jax_device"].split(": ", 1)
        peak = model_flops.datasheet_peak_flops(kind, dtype) if platform != "cpu" else None
        result["device"] = f"{platform}: {kind}"
        result["peak_tflops"] = result.get("peak_tflops", {}) | {dtype: peak / 1e12 if peak else None}
        if not peak:
            result["peak_note"] = (f"unknown: {kind!r} has no datasheet peak in mtbert_jax/training/flops.py "
                                   "DEVICE_PEAKS" if platform != "cpu" else "unknown: a CPU")
        result["matmul_limit"][dtype] = measured["matmul_limit"]
        for row in measured["results"]:
            result["results"].append({
                "dtype": dtype, "batch": row["batch"],
                "ours_examples_per_second": row["ours_examples_per_second"],
                "torch_examples_per_second": row["torch_examples_per_second"],
                "ours_over_torch": row["ratio"],
                "ours_step_ms": 1e3 * row["batch"] / row["ours_examples_per_second"],
                "ours_tflops": row["ours_gflops"] / 1e3,
                "torch_tflops": row["torch_gflops"] / 1e3 if row["torch_gflops"] is not None else None,
                "ours_fraction_of_peak": row["ours_gflops"] * 1e9 / peak if peak else None,
                "torch_fraction_of_peak": (row["torch_gflops"] * 1e9 / peak
                                           if peak and row["torch_gflops"] is not None else None),
                "ours_rss_mib": row["ours_rss_mib"], "torch_rss_mib": row["torch_rss_mib"]})
    if failures:
        raise PartError("; ".join(failures), result)
    return result


def part_host_overhead(check: Check) -> dict:
    steps = ["--steps", "20", "--warmup", "5"] if check.args.quick else []
    child = check.run("host_overhead", [sys.executable, str(BENCHMARKS / "host_overhead.py"), *steps,
                                        "--checkpoint", check.args.checkpoint])
    child.check("host_overhead.py")
    measured = child.json()
    keys = ("steps", "warmup", "batch", "median_ms_per_step", "mean_ms_per_step", "main_thread_ms_per_step",
            "main_thread_cpu_ms_per_step", "phases", "total_seconds")
    return {k: measured[k] for k in keys}


def part_inference(check: Check) -> dict:
    with_torch, pytorch = check.pytorch()
    child = check.run("inference", [sys.executable, str(BENCHMARKS / "inference.py"), "--batch",
                                    "16" if check.args.quick else "128", "--checkpoint", check.checkpoint(),
                                    "--dtype", "bfloat16", *([] if with_torch else ["--no-torch"])])
    child.check("inference.py")
    measured = child.json()
    keys = ("batch", "dtype", "examples", "ratio_vs_starter", "ratio_vs_sorted", "packed_ratio_vs_sorted",
            "ours_peak_rss_mib", "torch_peak_rss_mib", "results")
    return {"pytorch": pytorch, **{k: measured.get(k) for k in keys}}


PART_FUNCTIONS = {"device": part_device, "default_recipe": part_default_recipe, "train_step": part_train_step,
                  "host_overhead": part_host_overhead, "inference": part_inference}


# --------------------------------------------------------------------------------------- the split

def split_train_wall_time(lines: list[tuple[float, str]], records: list[dict], total: float
                          ) -> tuple[dict, dict, dict]:
    """train.py's wall time split into load, compile, train, dev evaluation and the end, from
    what the run prints and logs anyway: (seconds, how each was derived, the steady rates).

    `lines`: its stdout lines with the seconds since its start at which each arrived; `records`:
    its metrics.jsonl; `total`: its wall time. Raises ValueError when the output lacks a line or
    record the split needs.
    """
    plan = next((t for t, line in lines if PLAN_LINE.match(line)), None)
    dev_lines = [t for t, line in lines if DEV_LINE.match(line)]
    devs = [r for r in records if "dev_overall" in r]
    if plan is None:
        raise ValueError("no '<N> tasks, <S> steps ..., <D> device(s)' line")
    if not devs or len(dev_lines) != len(devs):
        raise ValueError(f"{len(dev_lines)} 'epoch N: dev' lines for {len(devs)} dev records")
    # run_seconds counts from train_and_evaluate's start; the first dev line is printed right
    # after its record is written, which places run_seconds on this clock.
    offset = dev_lines[0] - devs[0]["run_seconds"]
    previous = (plan, 0, "start")  # (time, step, kind) of the last event
    first_window, windows, rates, dev_spans = None, [], [], []
    for record in records:
        t = record["run_seconds"] + offset
        if "loss" in record:
            steps = record["step"] - previous[1]
            if previous[2] == "start":
                first_window = (t - plan, steps)
            elif previous[2] == "train" and steps > 0:  # not the window after a dev evaluation and save
                windows.append((t - previous[0]) / steps)
                rates.append(record["examples_per_second"])
            previous = (t, record["step"], "train")
        elif "dev_overall" in record:
            dev_spans.append((t, previous, record["step"]))
            previous = (t, record["step"], "dev")
    if not windows or first_window is None:
        raise ValueError("too few logging windows for a steady step time (log_every_steps too large for the run)")
    steady = statistics.median(windows)
    compile_seconds = first_window[0] - first_window[1] * steady
    evaluations = [t - before[0] - (step - before[1]) * steady for t, before, step in dev_spans]
    last_dev = dev_spans[-1][0]
    seconds = {"load": plan, "compile": compile_seconds, "train": last_dev - plan - compile_seconds - sum(evaluations),
               "dev_evaluation": sum(evaluations), "save_and_exit": total - last_dev, "train_py_total": total}
    seconds = {k: round(v, 2) for k, v in seconds.items()}
    seconds["dev_evaluation_each"] = [round(e, 2) for e in evaluations]
    derivation = {
        "load": "train.py's start until its line '<N> tasks, <S> steps ..., <D> device(s)', printed just before "
                "the first step (interpreter, imports, checkpoint, tokenizing the data into an empty cache, model "
                "and optimizer state), timed by this check as the line arrived (PYTHONUNBUFFERED=1)",
        "steady_step": "median over logging windows of (run_seconds difference / steps) between consecutive "
                       "metrics.jsonl records of one epoch, leaving out the first window of each epoch",
        "compile": "the first logging window (from the line above to the first record) minus its steps at the "
                   "steady step time: compiling the step for each task's batch shape, and first-call costs; a "
                   "compilation later in the run (a shape first met later) counts as train",
        "dev_evaluation": "each dev record's time minus the last record before it and the steps between them at "
                          "the steady step time; the first includes compiling the prediction function",
        "train": "the rest until the last dev record: the steps and the checkpoint saves",
        "save_and_exit": "after the last dev record: its checkpoint and best/ save, plots, exit",
        "evaluate": "dev_evaluation plus evaluate.py's wall time on best/ (start, load, compile, predict, plots; "
                    "it shares train.py's persistent XLA cache)",
        "clock": "metrics.jsonl's run_seconds, placed on this check's clock by the 'epoch 1: dev' line that "
                 "follows its record",
    }
    return seconds, derivation, {"steady_step_ms": round(steady * 1e3, 3),
                                 "examples_per_second": round(statistics.median(rates), 1)}


def copy_tree(source: Path, target: Path, names: tuple[str, ...]) -> None:
    """Copies what there is of source/NAME for each name (files or folders) into target."""
    for name in names:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name, dirs_exist_ok=True)
        elif (source / name).is_file():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, target / name)


# --------------------------------------------------------------------------------------- children

def describe_device() -> dict:
    """What the device part reports (runs in a child)."""
    import importlib.metadata as metadata
    import platform

    def version(distribution: str) -> str | None:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            return None

    versions = {d: version(d) for d in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "ml-collections",
                                        "transformers", "tokenizers", "torch", "numpy")}
    # jax's CUDA comes as plugins (jax-cuda12-plugin, jax-cuda13-pjrt) and NVIDIA's wheels.
    cuda = {d.metadata["Name"]: d.version for d in metadata.distributions()
            if re.match(r"(jax[-_]cuda|nvidia[-_](cuda[-_]runtime|cublas|cudnn))", d.metadata["Name"] or "")}
    import jax

    devices = []
    for d in jax.devices():
        entry = {"id": d.id, "platform": d.platform, "kind": d.device_kind}
        try:
            stats = d.memory_stats() or {}
            if "bytes_limit" in stats:
                entry["memory_gib"] = round(stats["bytes_limit"] / 2**30, 1)
        except Exception:  # not every backend has memory statistics
            pass
        devices.append(entry)
    info = {"jax_platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
            "device_count": jax.device_count(), "devices": devices, "versions": versions, "cuda": cuda,
            "torch_device": None, "cpu": common._cpu_model(), "cpu_cores": os.cpu_count(),
            "cpu_flags": common._cpu_flags(), "python": platform.python_version(), "platform": platform.platform()}
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True)
        found = re.search(r"Driver Version:\s*(\S+).*CUDA Version:\s*(\S+)", smi.stdout)
        if found:
            cuda["driver"], cuda["driver_cuda"] = found.groups()
    if versions["torch"]:
        try:
            import torch

            info["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
            cuda["torch_cuda"] = torch.version.cuda
        except Exception as e:  # a broken install is a finding, not a failure of the part
            info["torch_device"] = f"import failed: {type(e).__name__}: {e}"
    else:
        info["torch_device"] = "PyTorch: not installed"
    return info


def probe_devices() -> dict:
    """jax's platform and torch's device only, for parts run without the device part."""
    import jax
    import torch

    return {"jax_platform": jax.devices()[0].platform, "torch": torch.__version__,
            "torch_device": "cuda" if torch.cuda.is_available() else "cpu"}


def write_tiny_checkpoint(checkpoint: str, out: Path) -> None:
    import jax

    from mtbert_jax.checkpoints.hf import export_hf_checkpoint, resolve_checkpoint_dir
    from mtbert_jax.model.encoder import init_params
    from mtbert_jax.synthetic import tiny_bert_config

    vocab_dir = resolve_checkpoint_dir(checkpoint)
    vocab_size = len((vocab_dir / "vocab.txt").read_text(encoding="utf-8").splitlines())
    config = tiny_bert_config(vocab_size=vocab_size, max_position_embeddings=128)
    export_hf_checkpoint(init_params(config, jax.random.PRNGKey(0)), config, out, tokenizer_dir=vocab_dir)


# --------------------------------------------------------------------------------------- report

def summary_line(part: str, r: dict) -> str:
    """One cell of the markdown table: the part's headline numbers."""
    if r["status"] != "ok":
        return r.get("error", "").splitlines()[0][:300] if r.get("error") else r["status"]
    if part == "device":
        v = r["versions"]
        torch = f"torch {v['torch']} ({r['torch_device']})" if v["torch"] else r["torch_device"]
        return (f"{r['device_count']} x {r['jax_platform']}: {r['device_kind']}; jax {v['jax']}, flax {v['flax']}, "
                f"{torch}; CPU {r['cpu']}, {r['cpu_cores']} cores")
    if part == "default_recipe":
        s = r["seconds"]
        dev = ", ".join(f"{t} {next(iter(m.values())):.3f}" for t, m in r["dev"].items())
        return (f"{r['steps']} steps, {r['compute_dtype']}; dev overall {r['dev_overall']:.4f} ({dev}); load "
                f"{s['load']:.0f} s, compile {s['compile']:.0f} s, train {s['train']:.0f} s, evaluate "
                f"{s['evaluate']:.0f} s (train.py {s['train_py_total']:.0f} s, evaluate.py {s['evaluate_py']:.0f} s); "
                f"steady step {r['steady_step_ms']:.1f} ms")
    if part == "train_step":
        cells = []
        for row in r["results"]:
            ratio = f"{row['ours_over_torch']:.2f}x PyTorch" if row["ours_over_torch"] else "no PyTorch"
            peak = (f", {row['ours_fraction_of_peak']:.1%} of peak" if row["ours_fraction_of_peak"] is not None
                    else "")
            cells.append(f"{row['dtype']} b{row['batch']}: {row['ours_examples_per_second']:.0f} ex/s, {ratio}{peak}")
        return "; ".join(cells) + ("" if "peak_note" not in r else f" (peak {r['peak_note']})")
    if part == "host_overhead":
        return (f"main thread {r['main_thread_cpu_ms_per_step']:.2f} ms CPU per step; {r['median_ms_per_step']:.2f} "
                f"ms per step (median)")
    if part == "inference":
        best = min(r["results"], key=lambda row: row["seconds"])
        ratio = f"; ours / PyTorch sorted {r['ratio_vs_sorted']:.2f}" if r["ratio_vs_sorted"] else ""
        return f"{r['examples']} dev records, {r['dtype']}: fastest {best['side']} {best['examples_per_second']:.0f} ex/s{ratio}"
    return ""


def markdown(results: list[dict], quick: bool) -> str:
    device = next((r for r in results if r["part"] == "device" and r["status"] == "ok"), None)
    where = f"{device['jax_platform']}: {device['device_kind']}" if device else "device unknown"
    lines = [f"## Accelerator check{' (--quick)' if quick else ''}: {where}, "
             f"{datetime.date.today().isoformat()}", "", "| part | status | seconds | result |", "|---|---|---|---|"]
    for r in results:
        cell = summary_line(r["part"], r).replace("|", "/").replace("\n", " ")
        lines.append(f"| {r['part']} | {r['status']} | {r['part_seconds']:.0f} | {cell} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- command line

def eval_file_spec(spec: str) -> str:
    """SPLIT:TASK=PATH with the path made absolute (the children run in the repository root)."""
    try:
        split_task, path = spec.split("=", 1)
        split, task = split_task.split(":", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected SPLIT:TASK=PATH, e.g. dev:sts=my-sts.csv") from None
    if split not in ("dev", "test"):
        raise argparse.ArgumentTypeError(f"{spec!r}: split {split!r}, expected dev or test")
    return f"{split}:{task}={Path(path).resolve()}"


def default_data_dir() -> Path:
    return Path(os.environ.get("MTBERT_DATA_DIR") or ROOT.parent / "shared" / "data")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--checkpoint", default="default",
                        help="a Hugging Face BERT directory, or 'default' for the embedded MiniLM")
    parser.add_argument("--quick", action="store_true", help="every part shrunk to a minute or two on a CPU")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="run these, in this order")
    parser.add_argument("--eval-file", action="append", default=[], type=eval_file_spec, metavar="SPLIT:TASK=PATH",
                        help="also evaluate the recipe's best/ on this file (evaluate.py --task-file); repeatable")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="the task files (default $MTBERT_DATA_DIR, else ../shared/data)")
    parser.add_argument("--out", type=Path, help="also write the markdown summary here")
    parser.add_argument("--logs", type=Path,
                        help="keep every child's stdout and stderr, and the recipe's metrics, here")
    parser.add_argument("--deadline", type=float, default=0,
                        help="seconds: stop a part still running then, and skip the rest (0: none)")
    parser.add_argument("--side", choices=["device", "probe", "tiny-checkpoint"], help=argparse.SUPPRESS)
    parser.add_argument("--side-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        return run_side(args)
    if args.checkpoint != "default":
        args.checkpoint = str(Path(args.checkpoint).resolve())
    args.data_dir = args.data_dir.resolve()
    args.logs = args.logs.resolve() if args.logs else None

    check = Check(args)
    results = []
    try:
        for part in args.parts:
            start = time.monotonic()
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_before = used.ru_utime + used.ru_stime
            print(f"[accelerator_check] part {part}", file=sys.stderr, flush=True)
            try:
                result = {"part": part, "status": "ok", **PART_FUNCTIONS[part](check)}
            except PartError as e:
                status = "skipped" if isinstance(e, DeadlinePassed) else "error"
                result = {"part": part, "status": status, "error": str(e), **e.partial}
            except Exception as e:  # this script's own fault: reported like a part's, the next part runs
                result = {"part": part, "status": "error", "error": f"{type(e).__name__}: {e}",
                          "traceback": traceback.format_exc()[-3000:]}
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            result["part_seconds"] = round(time.monotonic() - start, 2)
            # The children's CPU time: what the part costs whatever else shares the machine.
            result["part_cpu_seconds"] = round(used.ru_utime + used.ru_stime - cpu_before, 2)
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        check.close()
    summary = markdown(results, args.quick)
    print(summary)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(summary)
    return 0 if all(r["status"] == "ok" for r in results) else 1


def run_side(args: argparse.Namespace) -> int:
    """The work of one child: print its JSON line, or one error line and exit 2."""
    try:
        if args.side == "device":
            print(json.dumps(describe_device()))
        elif args.side == "probe":
            print(json.dumps(probe_devices()))
        else:
            write_tiny_checkpoint(args.checkpoint, args.side_out)
    except Exception as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
