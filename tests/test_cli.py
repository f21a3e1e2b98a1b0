"""The CLI end to end on a tiny local model: output file, table, and one-line errors."""

import json
import subprocess
import sys

import pytest

from evo.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "evo.cli", *args], capture_output=True, text=True, timeout=300)


def test_calibrate_writes_the_set_and_prints_the_table(tiny_model_dir, text_corpus, tmp_path, capsys):
    out = tmp_path / "cal.json"
    code = main(["calibrate", "--model", str(tiny_model_dir("llama")), "--corpus", str(text_corpus),
                 "--samples", "6", "--clusters", "3", "--heldout", "3", "--seq-len", "32", "--out", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert len(data["calibration"]["sources"]) == 6 and len(data["calibration"]["clusters"]) == 6
    printed = capsys.readouterr().out
    assert "CCDS clusters" in printed and "ARI" in printed


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "no-such-model"], "unknown model"),
        (["--corpus", "/nonexistent/corpus.txt"], "does not exist"),
        (["--samples", "2", "--clusters", "3"], "smaller than --clusters"),
        (["--clusters", "500", "--samples", "600", "--heldout", "0"], "larger than the"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tiny_model_dir, text_corpus, tmp_path, extra, message):
    args = ["calibrate", "--model", str(tiny_model_dir("llama")), "--corpus", str(text_corpus),
            "--samples", "6", "--clusters", "3", "--heldout", "3", "--seq-len", "32", "--out", str(tmp_path / "c.json")]
    # later options override earlier ones in argparse
    result = run_cli(*args, *extra)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "c.json").exists()


def test_empty_corpus_is_refused(tiny_model_dir, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    result = run_cli("calibrate", "--model", str(tiny_model_dir("llama")), "--corpus", str(tmp_path / "empty.txt"),
                     "--out", str(tmp_path / "c.json"))
    assert result.returncode == 2 and "corpus is empty" in result.stderr
