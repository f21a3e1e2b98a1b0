"""Every file evo writes in place goes through one atomic writer: temp file, fsync, rename."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import evo.fileio as fileio
from evo.fileio import atomic_path, atomic_write_text


@pytest.fixture
def fsyncs(monkeypatch):
    calls = []
    real = os.fsync

    def counting(fd):
        calls.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)  # which file was made durable
        return real(fd)

    monkeypatch.setattr(fileio.os, "fsync", counting)
    return calls


def test_atomic_path_replaces_only_when_the_block_succeeds(tmp_path, fsyncs):
    target = tmp_path / "file.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and len(fsyncs) == 2 and fsyncs[-1].startswith(".file.txt.")


def test_reference_stats_and_optuna_journal_use_the_atomic_writer(tmp_path, fsyncs):
    from evo.compress.prune import ActivationStats
    from evo.evaluate.reference import DenseReference
    from evo.evaluate.stats import load_stats, save_stats

    save_stats({"w": ActivationStats(l2=torch.ones(3), absmax=torch.ones(3))}, tmp_path / "stats.safetensors")
    assert _atomic(fsyncs, "stats.safetensors") and set(load_stats(tmp_path / "stats.safetensors")) == {"w"}

    n, length, k, m = 2, 4, 3, 2
    reference = DenseReference(
        token_ids=torch.zeros(n, length, dtype=torch.int32), topk_ids=torch.zeros(n, length, k, dtype=torch.int32),
        topk_logprobs=torch.zeros(n, length, k), tail_logprob=torch.zeros(n, length),
        tail_ids=torch.zeros(n, length, m, dtype=torch.int32), tail_logprobs=torch.zeros(n, length, m),
        target_logprob=torch.zeros(n, length - 1))
    reference.save(tmp_path / "reference.safetensors")
    assert _atomic(fsyncs, "reference.safetensors") and DenseReference.load(tmp_path / "reference.safetensors").top_k == k

    from evo.search.engines import Problem, Score, make_engine
    from evo.types import Gene

    genes = tuple(Gene(f"u{i}.bits", "bits", (2, 4, 8), i, i) for i in range(3))
    problem = Problem(genes=genes, size_of=lambda g: 10 * sum(g) + 10, budget_bytes=40, workdir=tmp_path)
    engine = make_engine("optuna", problem, population=2, seed=0)
    requests = engine.ask()
    engine.tell([(r, Score(float(np.sum(r.genome)), problem.size_of(r.genome))) for r in requests])
    assert _atomic(fsyncs, "optuna_journal.log") and (tmp_path / "optuna_journal.log").stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _atomic(fsynced: list[str], name: str) -> bool:
    """A temp file of atomic_path for `name` was fsync'd (it is renamed onto `name` afterwards)."""
    return any(n.startswith(f".{name}.") and n.endswith(".tmp") for n in fsynced)
