"""The README's quick start and CI must not drift apart."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_ci_runs_the_readme_test_command():
    test_command = [c for c in readme_commands() if "pytest" in c]
    assert len(test_command) == 1
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command[0] in ci_lines


def test_quick_start_is_two_commands_starting_with_setup():
    commands = readme_commands()
    assert len(commands) == 2
    assert all(c.startswith("bash scripts/setup.sh && ") for c in commands)
