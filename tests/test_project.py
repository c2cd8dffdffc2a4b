"""The project's own promises: README's test command is what CI runs."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_two_commands_and_ci_runs_the_second():
    commands = _readme_commands()
    assert len(commands) == 2
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci_lines


def _edits_the_import_path(node) -> bool:
    """A call of sys.path's insert or append."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("insert", "append") and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr == "path" and isinstance(node.func.value.value, ast.Name)
            and node.func.value.value.id == "sys")


def test_tests_import_the_project_and_benchmarks_as_packages():
    """No test edits the import path: the project and benchmarks/ are installed packages
    (pyproject.toml); child scripts get their folder through PYTHONPATH."""
    edits = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").rglob("*.py"))
             if any(_edits_the_import_path(n) for n in ast.walk(ast.parse(p.read_text())))]
    assert not edits
