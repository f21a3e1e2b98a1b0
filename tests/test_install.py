"""A non-editable install (`pip install .`) ships everything evo needs at run time: the search
spaces (`--space default`) and the embedded corpus are package data, not files of the checkout."""

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_non_editable_install_runs_search_with_the_default_space(tmp_path, tiny_model_dir):
    # A copy of the tracked tree: building writes build/ and *.egg-info beside the sources.
    source = tmp_path / "source"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((REPO / name).read_bytes())
    # A fresh venv that sees this interpreter's packages (torch, transformers, pip, setuptools) through a
    # path entry: nothing is downloaded, and this environment's own evo is not on that path.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    venv_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    capture_output=True, text=True, check=True).stdout.strip())
    (venv_site / "parent.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                              "--ignore-installed", "--no-index", "--quiet", str(source)],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]

    where = subprocess.run([str(python), "-c", "import evo.search.space as s; print(s.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout
    assert where.startswith(str(venv_site)), where  # the installed copy, not a checkout

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "prose.txt").write_text("The quick brown fox jumps over the lazy dog. " * 60)
    (corpus / "code.txt").write_text("def f(x):\n    return x * 2 + 1\n\n" * 80)
    search = subprocess.run(
        [str(venv / "bin" / "evo"), "search", "--space", "default", "--model", str(tiny_model_dir("llama")),
         "--corpus", str(corpus), "--budget-mb", "0.001", "--samples", "4", "--seq-len", "32", "--clusters", "2",
         "--screen-sequences", "2", "--screen-tokens", "16", "--generations", "0", "--device", "cpu",
         "--run-dir", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert search.returncode == 2, search.stderr[-2000:]
    assert "below the smallest artifact this space can reach" in search.stderr  # the budget check ran
