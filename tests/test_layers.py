"""The package's layers: no module imports one of a higher layer, and the library never imports
the run layer.

From the bottom: errors and the disposable caches; tasks and the batch layout; model; checkpoints (Hugging Face directories, which build the
encoder's parameters); data; then training, evaluation and synthetic side by side (none imports
another); run at the top (what only a run needs: config, loop, checkpoint files, drivers).
Every `import` counts, those inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mtbert_jax"
LAYERS = (("errors", "caches"), ("tasks", "batch"), ("model",), ("checkpoints",), ("data",),
          ("training", "evaluation", "synthetic"), ("run",))
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """mtbert_jax.data.packing -> data; mtbert_jax.tasks -> tasks."""
    return module.split(".")[1]


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a mtbert_jax module in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("mtbert_jax.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mtbert_jax"):
            if node.module == "mtbert_jax":  # from mtbert_jax import tasks
                found += [(node.lineno, f"mtbert_jax.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def violations(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    module = ".".join(path.relative_to(root).with_suffix("").parts)
    mine = unit_of(module)
    found = []
    for line, imported in project_imports(path):
        theirs = unit_of(imported)
        if theirs != mine and RANK[theirs] >= RANK[mine]:
            found.append(f"{path.relative_to(root)}:{line}: {mine} imports {imported} ({theirs} is "
                         f"{'the same layer' if RANK[theirs] == RANK[mine] else 'a higher layer'})")
    return found


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and p.name != "__pycache__")}
    assert units == set(RANK), "a new module or package needs its place in LAYERS"


def test_no_import_runs_up_a_layer():
    found = [v for path in sorted(PACKAGE.rglob("*.py")) for v in violations(path)]
    assert not found, "\n".join(found)


def test_the_check_sees_an_upward_import(tmp_path):
    """The walk itself: an upward or sideways import, even inside a function, is reported; a
    downward one is not."""
    package = tmp_path / "mtbert_jax"
    (package / "data").mkdir(parents=True)
    (package / "training").mkdir()
    up = package / "data" / "probe.py"
    up.write_text("import numpy\nfrom mtbert_jax.model import encoder\n\n"
                  "def f():\n    from mtbert_jax.run.config import RunConfig\n")
    sideways = package / "training" / "probe.py"
    sideways.write_text("from mtbert_jax import evaluation\nimport mtbert_jax.data.packing\n")
    assert project_imports(up) == [(2, "mtbert_jax.model"), (5, "mtbert_jax.run.config")]
    assert [v.split(": ", 1)[1] for v in violations(up, tmp_path)] == [
        "data imports mtbert_jax.run.config (run is a higher layer)"]
    assert [v.split(": ", 1)[1] for v in violations(sideways, tmp_path)] == [
        "training imports mtbert_jax.evaluation (evaluation is the same layer)"]
