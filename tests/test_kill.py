"""kill -9 at random instants across a run's whole life (creation, CCDS, statistics, reference,
evaluations, every atomic write), for DEAP and optuna: the same command rerun after each kill ends
with the same files as an uninterrupted run, nothing evaluated twice, nothing lost.

The slow variant makes >= 20 kills per engine (run it with `-m slow`); the fast one a few.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

# Files whose bytes are a function of the spec (the journal is compared without its timings;
# optuna's journal holds wall-clock datetimes and is compared by its complete trials).
SAME_BYTES = ("spec.json", "run.json", "calibration.json", "activation_stats.safetensors", "reference.safetensors",
              "checkpoint.json", "front.json", "best.toml")


def _corpus(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "prose.txt").write_text("The quick brown fox jumps over the lazy dog. " * 60)
    (directory / "digits.txt").write_text("0123456789 " * 200)
    (directory / "code.txt").write_text("def f(x):\n    return x * 2 + 1\n\n" * 80)
    return directory


def _budget_mb(model_dir: Path, tmp: Path) -> float:
    from evo.compress.size import SizeCache
    from evo.modelio import load_model
    from evo.search.budget import early_budget_range
    from evo.search.space import SearchSpace

    reach = early_budget_range(SearchSpace.load("default"), load_model(str(model_dir)), SizeCache(tmp))
    return (reach.smallest + 0.4 * (reach.largest - reach.smallest)) / 1e6


def _command(model_dir, corpus, budget_mb, run_dir, engine) -> list[str]:
    return [sys.executable, "-m", "evo.cli", "search", "--model", str(model_dir), "--corpus", str(corpus),
            "--budget-mb", f"{budget_mb:.6f}", "--generations", "2", "--population", "4", "--samples", "4",
            "--seq-len", "32", "--clusters", "2", "--screen-sequences", "2", "--screen-tokens", "16",
            "--fitness", "ppl", "--run-dir", str(run_dir), *engine]


def _phase(run_dir: Path) -> str:
    """Where the run stood when it was killed (for the report of what the kills covered)."""
    if not (run_dir / "run.json").exists():
        return "before creation"
    for name, phase in (("calibration.json", "CCDS"), ("activation_stats.safetensors", "statistics"),
                        ("reference.safetensors", "reference")):
        if not (run_dir / name).exists():
            return phase
    if not (run_dir / "checkpoint.json").exists():
        return "first generation"
    return "later generations"


def _safetensors(path: Path) -> tuple[dict, dict]:
    """A safetensors file's metadata and each tensor's dtype, shape and bytes."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        metadata = handle.metadata()
    return metadata, {name: (str(t.dtype), tuple(t.shape), t.numpy().tobytes()) for name, t in tensors.items()}


def _journal(run_dir: Path) -> list[dict]:
    lines = (run_dir / "journal.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def _assert_same_run(run_dir: Path, straight: Path, engine: list[str]) -> None:
    for name in SAME_BYTES:
        if name.endswith(".safetensors"):  # its writer orders the header's metadata per process (a HashMap)
            assert _safetensors(run_dir / name) == _safetensors(straight / name), name
        else:
            assert (run_dir / name).read_bytes() == (straight / name).read_bytes(), name
    appended = sorted(p.name for p in straight.glob("checkpoint.*.jsonl"))  # the engine state's growing lists
    assert appended == sorted(p.name for p in run_dir.glob("checkpoint.*.jsonl"))
    for name in appended:  # lines a killed process appended past its checkpoint were cut at the next one
        assert (run_dir / name).read_bytes() == (straight / name).read_bytes(), name
    journal = _journal(run_dir)
    assert len({entry["key"] for entry in journal}) == len(journal)  # nothing evaluated twice
    assert journal == _journal(straight)  # nothing lost, same order, same scores
    assert not [p for p in run_dir.rglob(".*") if p.name != ".lock"]  # no temp file left behind
    assert not [p for p in run_dir.parent.iterdir() if p.name.startswith(".evo-")]
    if engine:
        optuna = pytest.importorskip("optuna")
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        storage = JournalStorage(JournalFileBackend(str(run_dir / "optuna_journal.log")))
        study = optuna.load_study(study_name="evo", storage=storage)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(complete) == len(journal)


def _wait_for_event(process, run_dir: Path, rng: random.Random, horizon: float) -> bool:
    """Wait for a random event of the run's life (a random instant after start, the run directory
    appearing, a calibration/statistics/reference file written, the k-th journal line), then a
    random few milliseconds more; True when the process is still running (to be killed)."""
    event = rng.choice(["instant", "run.json", "calibration.json", "activation_stats.safetensors",
                        "reference.safetensors", "journal", "journal", "checkpoint.json"])
    line = rng.randrange(1, 30)
    journal = run_dir / "journal.jsonl"
    if (event == "journal" and journal.exists() and journal.read_bytes().count(b"\n") >= line) or (
            event not in ("instant", "journal") and (run_dir / event).exists()):
        event = "instant"  # that moment has passed in this run: a random instant instead
    deadline = time.perf_counter() + (rng.uniform(0.0, horizon) if event == "instant" else 600)
    while process.poll() is None and time.perf_counter() < deadline:
        if event == "journal":
            path = run_dir / "journal.jsonl"
            if path.exists() and path.read_bytes().count(b"\n") >= line:
                break
        elif event != "instant" and (run_dir / event).exists():
            break
        time.sleep(0.002)
    time.sleep(rng.uniform(0.0, 0.05))
    return process.poll() is None


def kill_at_random_instants(tiny_model_dir, tmp_path, engine: list[str], kills: int, seed: int) -> Counter:
    model_dir = tiny_model_dir("llama")
    corpus = _corpus(tmp_path / "corpus")
    budget = _budget_mb(model_dir, tmp_path / "sizes")
    straight = tmp_path / "straight" / "run"
    started = time.perf_counter()
    result = subprocess.run(_command(model_dir, corpus, budget, straight, engine), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    horizon = time.perf_counter() - started  # kill instants are drawn over an uninterrupted run's life
    rng = random.Random(seed)
    phases: Counter = Counter()
    attempt = 0
    while sum(phases.values()) < kills:
        run_dir = tmp_path / f"killed{attempt}" / "run"  # a fresh run when the last one finished
        attempt += 1
        while True:
            process = subprocess.Popen(_command(model_dir, corpus, budget, run_dir, engine),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if _wait_for_event(process, run_dir, rng, horizon):
                process.kill()  # SIGKILL
                process.wait()
                phases[_phase(run_dir)] += 1
                if sum(phases.values()) >= kills:
                    break
                continue
            assert process.returncode == 0, "the search failed: rerun it by hand to see why"
            break
        final = subprocess.run(_command(model_dir, corpus, budget, run_dir, engine), capture_output=True, text=True,
                               timeout=600)
        assert final.returncode == 0, final.stderr
        _assert_same_run(run_dir, straight, engine)
    print(f"{engine or ['deap']}: {sum(phases.values())} kills at {dict(phases)}")
    return phases


ENGINES = [pytest.param([], id="deap"), pytest.param(["--engine", "optuna", "--sampler", "tpe"], id="optuna")]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_few_random_kills_end_as_an_uninterrupted_run(tiny_model_dir, tmp_path, engine):
    kill_at_random_instants(tiny_model_dir, tmp_path, engine, kills=2, seed=3)


@pytest.mark.slow
@pytest.mark.soak
@pytest.mark.parametrize("engine", ENGINES)
def test_twenty_random_kills_end_as_an_uninterrupted_run(tiny_model_dir, tmp_path, engine):
    phases = kill_at_random_instants(tiny_model_dir, tmp_path, engine, kills=20, seed=0)
    assert sum(phases.values()) >= 20
    assert len(phases) >= 3  # the instants spread over creation, calibration, reference and evaluations
