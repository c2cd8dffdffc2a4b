"""PNG plots of a run: training loss per task and dev metrics per evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training_curves(metrics_path: str | Path, out_dir: str | Path) -> Path:
    """training_curves.png: per-task training loss by step, and dev metrics by step."""
    records = read_metrics(Path(metrics_path))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    train = [r for r in records if "loss" in r]
    for task in sorted({t for r in train for t in r["loss"]}):
        points = [(r["step"], r["loss"][task]) for r in train if task in r["loss"]]
        left.plot(*zip(*points), label=task)
    left.set(xlabel="step", ylabel="training loss", title="Training loss per task")
    dev = [r for r in records if "dev" in r]
    for task in sorted({t for r in dev for t in r["dev"]}):
        points = [(r["step"], next(iter(r["dev"][task].values()))) for r in dev if task in r["dev"]]
        right.plot(*zip(*points), marker="o", label=f"{task} ({next(iter(dev[-1]['dev'][task]))})")
    if dev:
        right.plot([r["step"] for r in dev], [r["dev_overall"] for r in dev], "k--", marker="s", label="overall")
    right.set(xlabel="step", ylabel="dev metric", title="Dev metrics")
    for axis in (left, right):
        if axis.lines:
            axis.legend()
        axis.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / "training_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
