"""evo search end to end on a tiny random model: resume after kill -9 equals an uninterrupted
run, budgets are checked before any evaluation, export matches what the search recorded."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evo.errors import EvoError
from evo.search.loop import SearchSpec, open_session

GENERATIONS = 4
POPULATION = 6


def spec_args(model_dir, corpus, budget_mb, seed=0):
    return ["--model", str(model_dir), "--corpus", str(corpus), "--budget-mb", f"{budget_mb:.6f}",
            "--generations", str(GENERATIONS), "--population", str(POPULATION), "--samples", "6",
            "--seq-len", "32", "--clusters", "3", "--screen-sequences", "2", "--screen-tokens", "16",
            "--seed", str(seed), "--fitness", "ppl"]


def evo(*args, wait=True):
    command = [sys.executable, "-m", "evo.cli", *args]
    if wait:
        return subprocess.run(command, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def budget_mb(tiny_model_dir, tmp_path_factory):
    """A budget halfway between the smallest and largest artifact of the default space."""
    corpus = _corpus(tmp_path_factory.mktemp("corpus"))
    spec = SearchSpec(budget_bytes=10**9, model=str(tiny_model_dir("llama")), corpus=(str(corpus),), samples=6,
                      seq_len=32, clusters=3, screen_sequences=2, screen_tokens=16, fitness="ppl")
    session = open_session(spec, tmp_path_factory.mktemp("probe") / "run", resume=False)
    from evo.search.space import extreme_genome
    from evo.search.engines import Problem

    problem = Problem(genes=session.genes, size_of=session.size_of, budget_bytes=spec.budget_bytes)
    low = session.size_of(extreme_genome(problem, smallest=True))
    high = session.size_of(extreme_genome(problem, smallest=False))
    return (low + 0.4 * (high - low)) / 1e6, low / 1e6, high / 1e6


def _corpus(directory: Path) -> Path:
    (directory / "prose.txt").write_text("The quick brown fox jumps over the lazy dog. " * 60)
    (directory / "digits.txt").write_text("0123456789 " * 200)
    (directory / "code.txt").write_text("def f(x):\n    return x * 2 + 1\n\n" * 80)
    return directory


def journal_lines(run_dir: Path) -> int:
    path = run_dir / "journal.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.parametrize("engine_args", [[], ["--engine", "optuna", "--sampler", "tpe"]], ids=["deap", "optuna"])
def test_resume_after_kill_equals_uninterrupted_run(tiny_model_dir, tmp_path, budget_mb, engine_args):
    corpus = _corpus(tmp_path)
    args = spec_args(tiny_model_dir("llama"), corpus, budget_mb[0]) + engine_args
    straight = evo("search", *args, "--run-dir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    total = journal_lines(tmp_path / "straight")

    run_dir = tmp_path / "killed"
    process = evo("search", *args, "--run-dir", str(run_dir), wait=False)
    kills = 0
    for target in (3, total // 2):
        deadline = time.time() + 300
        while journal_lines(run_dir) < target and process.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            kills += 1
        process = evo("search", *args, "--resume", str(run_dir), wait=False)
    assert process.wait(timeout=600) == 0
    assert kills >= 1, "the run finished before it could be killed"
    lines = (run_dir / "journal.jsonl").read_text().splitlines()
    keys = [json.loads(line)["key"] for line in lines]
    assert len(keys) == len(set(keys)) == total  # nothing evaluated twice, nothing lost
    front = json.loads((run_dir / "front.json").read_text())
    assert front == json.loads((tmp_path / "straight" / "front.json").read_text())
    assert (run_dir / "best.toml").read_text() == (tmp_path / "straight" / "best.toml").read_text()
    if engine_args:  # the study the dashboard opens holds every evaluation once
        optuna = pytest.importorskip("optuna")
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        storage = JournalStorage(JournalFileBackend(str(run_dir / "optuna_journal.log")))
        study = optuna.load_study(study_name="evo", storage=storage)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(complete) == total


def test_budget_out_of_reach_fails_before_any_evaluation(tiny_model_dir, tmp_path, budget_mb):
    _, low, high = budget_mb
    corpus = _corpus(tmp_path)
    for budget, message in ((low * 0.5, "below the smallest"), (high * 1.5, "at or above the largest")):
        run_dir = tmp_path / f"run{budget:.3f}"
        result = evo("search", *spec_args(tiny_model_dir("llama"), corpus, budget), "--run-dir", str(run_dir))
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "MB" in result.stderr
        assert journal_lines(run_dir) == 0


def test_resume_with_other_settings_is_refused(tiny_model_dir, tmp_path, budget_mb):
    corpus = _corpus(tmp_path)
    run_dir = tmp_path / "run"
    args = spec_args(tiny_model_dir("llama"), corpus, budget_mb[0])
    args[args.index("--generations") + 1] = "0"
    assert evo("search", *args, "--run-dir", str(run_dir)).returncode == 0
    before = (run_dir / "journal.jsonl").read_bytes()
    other = spec_args(tiny_model_dir("llama"), corpus, budget_mb[0], seed=9)
    result = evo("search", *other, "--resume", str(run_dir))
    assert result.returncode == 2 and "seed" in result.stderr
    assert (run_dir / "journal.jsonl").read_bytes() == before
    result = evo("search", *args, "--engine", "optuna", "--resume", str(run_dir))
    assert result.returncode == 2 and "engine 'deap' in the run, 'optuna' asked" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (run_dir / "journal.jsonl").read_bytes() == before
    for bad, message in ((["--engine", "cmaes"], "unknown engine 'cmaes'"),
                         (["--engine", "optuna", "--sampler", "cmaes"], "unknown sampler 'cmaes'")):
        result = evo("search", *args, *bad, "--run-dir", str(tmp_path / "bad"))
        assert result.returncode == 2 and message in result.stderr
        assert not (tmp_path / "bad").exists()


def test_export_matches_the_recorded_size_and_quality(tiny_model_dir, tmp_path, budget_mb):
    corpus = _corpus(tmp_path)
    run_dir = tmp_path / "run"
    args = spec_args(tiny_model_dir("llama"), corpus, budget_mb[0])
    args[args.index("--generations") + 1] = "1"
    assert evo("search", *args, "--run-dir", str(run_dir)).returncode == 0
    result = evo("export", str(run_dir), "--out", str(tmp_path / "export"))
    assert result.returncode == 0, result.stderr
    front = json.loads((run_dir / "front.json").read_text())["front"]
    best = min(front, key=lambda p: p["quality"])
    artifact = tmp_path / "export" / "artifact"
    on_disk = sum(p.stat().st_size for p in artifact.iterdir())
    assert on_disk == best["size_bytes"] <= int(round(budget_mb[0] * 1e6))
    assert (tmp_path / "export" / "best.toml").exists()
    # Fast-decoding coders: another size, predicted exactly (export fails on any difference).
    fast = evo("export", str(run_dir), "--out", str(tmp_path / "fast"), "--prefer-decode-speed")
    assert fast.returncode == 0, fast.stderr
    fast_disk = sum(p.stat().st_size for p in (tmp_path / "fast" / "artifact").iterdir())
    assert f"fast-decoding coders: {fast_disk:,} bytes" in " ".join(fast.stdout.split())

    # the artifact reproduces the quality the run recorded (calibration perplexity)
    import math

    import torch

    from evo.compress.artifact import load
    from evo.data.calibset import CalibrationSet

    model, _ = load(artifact)
    tokens = torch.as_tensor(CalibrationSet.load(run_dir / "calibration.json").calibration.token_ids).long()
    with torch.no_grad():
        logits = model(input_ids=tokens).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                            tokens[:, 1:].reshape(-1))
    assert math.exp(float(nll)) == pytest.approx(best["quality"], rel=1e-4)


def test_export_budget_below_the_front_is_refused(tmp_path):
    with pytest.raises(EvoError, match="does not exist"):
        from evo.search.store import RunStore

        RunStore.open(tmp_path / "missing").choose()


def test_export_after_a_bf16_search_uses_the_recorded_dtype(tiny_model_dir, tmp_path, budget_mb):
    """A GPU search loads bf16; its export on the CPU must load bf16 too, or the bytes differ."""
    corpus = _corpus(tmp_path)
    run_dir = tmp_path / "run"
    args = spec_args(tiny_model_dir("llama"), corpus, budget_mb[0])
    args[args.index("--generations") + 1] = "0"
    searched = evo("search", *args, "--dtype", "bfloat16", "--device", "cpu", "--run-dir", str(run_dir))
    assert searched.returncode == 0, searched.stderr
    assert json.loads((run_dir / "spec.json").read_text())["search"]["dtype"] == "bfloat16"

    exported = evo("export", str(run_dir), "--out", str(tmp_path / "export"))  # --dtype auto: the run's
    assert exported.returncode == 0, exported.stderr
    best = min(json.loads((run_dir / "front.json").read_text())["front"], key=lambda p: p["quality"])
    artifact = tmp_path / "export" / "artifact"
    assert sum(p.stat().st_size for p in artifact.iterdir()) == best["size_bytes"]
    assert json.loads((artifact / "manifest.json").read_text())["dtype"] == "bfloat16"

    refused = evo("export", str(run_dir), "--out", str(tmp_path / "other"), "--dtype", "float32")
    assert refused.returncode == 2 and "searched in bfloat16" in refused.stderr


def test_resume_takes_the_recorded_dtype_and_refuses_another(tiny_model_dir, tmp_path, budget_mb):
    corpus = _corpus(tmp_path)
    run_dir = tmp_path / "run"
    spec = SearchSpec(budget_bytes=int(budget_mb[0] * 1e6), model=str(tiny_model_dir("llama")), corpus=(str(corpus),),
                      samples=6, seq_len=32, clusters=3, screen_sequences=2, screen_tokens=16, fitness="ppl",
                      generations=0, dtype="bf16")
    assert spec.dtype == "bfloat16"  # the canonical name is what the run records
    open_session(spec, run_dir, resume=False)
    from dataclasses import replace

    resumed = open_session(replace(spec, dtype="auto"), run_dir, resume=True)
    assert resumed.spec.dtype == "bfloat16" and next(resumed.loaded.model.parameters()).dtype.is_floating_point
    assert str(next(resumed.loaded.model.parameters()).dtype) == "torch.bfloat16"
    with pytest.raises(EvoError, match="dtype"):
        open_session(replace(spec, dtype="float32"), run_dir, resume=True)
