"""The project's own promises: README's test command is what CI runs."""

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


def test_tests_import_the_project_and_benchmarks_as_packages():
    """No test edits sys.path: the project and benchmarks/ are installed packages (pyproject.toml)."""
    edits = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").rglob("*.py"))
             if "sys.path.insert" in p.read_text() or "sys.path.append" in p.read_text()]
    edits.remove("tests/test_project.py")  # this test's own text
    assert not edits
