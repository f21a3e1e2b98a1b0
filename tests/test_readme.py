"""The README's quick start and CI must not drift apart."""

from pathlib import Path

import pytest

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


# --- the sections a new user follows: every block marked `<!-- readme-test -->` runs as written ---

TESTED_MARK = "<!-- readme-test -->"
# What the tiny model needs instead of the README's sizes for a real one; appended, so they override.
FAST_OPTIONS = {
    "search": "--samples 6 --seq-len 64 --clusters 3 --screen-sequences 2 --screen-tokens 32 "
              "--generations 1 --population 4",
    "eval": "--seq-len 64 --max-tokens 2048",
}


def marked_blocks() -> list[tuple[str, str]]:
    """(language, code) of each fenced block right after a TESTED_MARK line, in README order."""
    import re

    text = (ROOT / "README.md").read_text()
    pattern = re.escape(TESTED_MARK) + r"\s*\n```(\w+)\n(.*?)```"
    return [(m.group(1), m.group(2)) for m in re.finditer(pattern, text, flags=re.S)]


def _tiny_budget_mb(model_dir) -> float:
    """Just above uniform 4-bit of the default space on the tiny model, as a user would pick from
    the sizes the search prints."""
    import tempfile

    from evo.compress.size import SizeCache, SizeModel
    from evo.modelio import load_model
    from evo.search.space import SearchSpace

    loaded = load_model(str(model_dir))
    space = SearchSpace.load("default")
    with tempfile.TemporaryDirectory() as cache:
        sizes = SizeModel.for_model(loaded, SizeCache(cache))
        config = space.decode(space.uniform_genome(loaded.info, 4), loaded.info)
        return (sizes.artifact_bytes(config) + 1000) / 1e6


@pytest.mark.slow  # ~160 s on a shared 2-core CPU: a search, an export and three evals of a tiny model
def test_readme_sections_run_as_written(tmp_path):
    """Your own model, Reading the results, Deploying: their commands on a tiny local model."""
    import os
    import re
    import subprocess
    import sys

    from tiny import save_tiny_model

    blocks = marked_blocks()
    assert [lang for lang, _ in blocks] == ["bash", "bash", "python"]
    save_tiny_model(tmp_path / "my-model")
    budget = _tiny_budget_mb(tmp_path / "my-model")
    # one thread: tiny tensors gain nothing from more, and OpenMP barriers stall on a busy CPU
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EVO_DATA_DIR": str(tmp_path / "no-shared-data"),
           "OMP_NUM_THREADS": "1"}
    transcript = []
    for lang, code in blocks:
        if lang == "python":
            commands = [[sys.executable, "-c", code]]
        else:
            commands = []
            for line in (line.strip() for line in code.splitlines()):
                if not line or line.startswith("#"):
                    continue
                assert line.startswith("evo "), line
                words = line.split()
                line = re.sub(r"--budget-mb \S+", f"--budget-mb {budget:.6f}", line)
                commands.append([sys.executable, "-m", "evo.cli", *line.split()[1:],
                                 *FAST_OPTIONS.get(words[1], "").split()])
        for command in commands:
            result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
            transcript.append(" ".join(command[1:3]) + f" -> {result.returncode}\n{result.stdout}")
            assert result.returncode == 0, "\n".join(transcript) + result.stderr
    output = "\n".join(transcript)
    assert "calibration_mix_heldout" in output and "held-out slice" in output  # eval's offline default
    assert "uniform 4-bit" in output  # the report's reference widths
    assert "MB of weights in memory" in output
