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
        left.plot(*zip(*points), marker=".", label=task)
    left.set(xlabel="step", ylabel="training loss (log scale)", title="Training loss per task",
             yscale="log")  # squared errors (STS) and cross-entropies differ in scale
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


def plot_confusion_matrix(matrix, title: str, path: str | Path) -> Path:
    """A confusion matrix (rows: gold class, columns: predicted class) with counts."""
    import numpy as np

    matrix = np.asarray(matrix)
    fig, axis = plt.subplots(figsize=(4.5, 4))
    axis.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        axis.text(j, i, str(count), ha="center", va="center",
                  color="white" if count > matrix.max() / 2 else "black")
    axis.set(xlabel="predicted", ylabel="gold", title=title,
             xticks=range(matrix.shape[1]), yticks=range(matrix.shape[0]))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_scatter(predicted, gold, title: str, path: str | Path) -> Path:
    """Predicted against gold scores (STS)."""
    fig, axis = plt.subplots(figsize=(4.5, 4))
    axis.scatter(gold, predicted, s=6, alpha=0.5)
    axis.plot([0, 5], [0, 5], "k--", lw=1)
    axis.set(xlabel="gold similarity", ylabel="predicted", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
