import json

import pytest

from evo.errors import EvoError
from evo.search.store import JOURNAL_FILE, RunStore, evaluation_key


def test_journal_survives_a_torn_last_line(tmp_path):
    store = RunStore.create(tmp_path / "run", {"search": {}})
    store.append((1, 2, 3), 2, 0.5, 1000, 1.0)
    store.append((1, 2, 4), 2, 0.4, 1100, 1.0)
    path = tmp_path / "run" / JOURNAL_FILE
    data = path.read_bytes()
    path.write_bytes(data + b'{"key": "s2:1.2.5", "genome": [1, 2')  # killed mid-append
    reopened = RunStore.open(tmp_path / "run")
    assert len(reopened) == 2
    assert reopened.lookup(evaluation_key((1, 2, 4), 2)).quality == 0.4
    assert path.read_bytes() == data  # the torn tail is cut so the next append starts clean
    reopened.append((1, 2, 5), 2, 0.3, 900, 1.0)
    assert len(RunStore.open(tmp_path / "run")) == 3


def test_corrupt_line_in_the_middle_is_refused(tmp_path):
    store = RunStore.create(tmp_path / "run", {"search": {}})
    store.append((1,), 2, 0.5, 1000, 1.0)
    store.append((2,), 2, 0.5, 1000, 1.0)
    path = tmp_path / "run" / JOURNAL_FILE
    lines = path.read_text().splitlines()
    path.write_text("garbage\n" + lines[1] + "\n")
    with pytest.raises(EvoError, match="corrupt"):
        RunStore.open(tmp_path / "run")


def test_existing_run_is_not_overwritten(tmp_path):
    RunStore.create(tmp_path / "run", {"search": {"seed": 1}})
    with pytest.raises(EvoError, match="--resume"):
        RunStore.create(tmp_path / "run", {"search": {"seed": 2}})
    assert '"seed": 1' in (tmp_path / "run" / "spec.json").read_text()


def test_open_refuses_non_runs(tmp_path):
    with pytest.raises(EvoError, match="does not exist"):
        RunStore.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(EvoError, match="not an evo run directory"):
        RunStore.open(tmp_path / "plain")


def test_corrupt_checkpoint_is_refused(tmp_path):
    store = RunStore.create(tmp_path / "run", {"search": {}})
    store.write_checkpoint({"generation": 1, "engine": {}})
    assert store.read_checkpoint()["generation"] == 1
    (tmp_path / "run" / "checkpoint.json").write_text("{not json")
    with pytest.raises(EvoError, match="corrupt"):
        RunStore.open(tmp_path / "run").read_checkpoint()


def test_a_batch_of_journal_lines_is_fsynced_once_and_read_back(tmp_path, monkeypatch):
    import evo.search.store as store_module

    synced = []
    real = store_module.os.fsync
    monkeypatch.setattr(store_module.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    store = RunStore.create(tmp_path / "run", {"search": {}})
    synced.clear()  # the run's creation fsyncs its files
    for index in range(5):
        store.append((1, index), 1, 0.1 * index, 1000 + index, 0.01, durable=False)
    assert synced == []  # written and flushed per line, not fsynced
    assert len(RunStore.open(tmp_path / "run")) == 5  # another process (a resume) reads every line
    store.sync()
    store.sync()  # nothing new: no second fsync
    assert len(synced) == 1
    store.append((2, 0), 2, 0.7, 999, 0.01)  # durable by default: its own fsync
    assert len(synced) == 2 and len(RunStore.open(tmp_path / "run")) == 6


def _state(archive: list, generation: int) -> dict:
    return {"generation": generation, "engine": {"engine": "deap", "population": archive[:2], "archive": archive}}


def _pairs(n: int) -> list:
    return [[[i % 7, i, 3], 1.0 / (i + 1), 1000 + i] for i in range(n)]


def test_checkpoint_appends_the_archive_and_stays_one_size(tmp_path):
    store = RunStore.create(tmp_path / "run", {"search": {}})
    checkpoint, items = tmp_path / "run" / "checkpoint.json", tmp_path / "run" / "checkpoint.archive.jsonl"
    sizes, written = [], []
    for generation in range(1, 6):
        store.write_checkpoint(_state(_pairs(8 * generation), generation))
        sizes.append(len(checkpoint.read_bytes()))
        written.append(items.read_bytes())
        assert written[-1].startswith(written[-2] if len(written) > 1 else b"")  # appended, never rewritten
    assert max(sizes) - min(sizes) <= 2  # the counts' digits; the archive is not inline
    assert items.read_bytes().count(b"\n") == 40
    for reader in (store, RunStore.open(tmp_path / "run")):
        assert reader.read_checkpoint() == {"format": 1, **_state(_pairs(40), 5)}


def test_items_past_the_checkpoint_are_ignored_then_cut(tmp_path):
    store = RunStore.create(tmp_path / "run", {"search": {}})
    store.write_checkpoint(_state(_pairs(8), 1))
    items = tmp_path / "run" / "checkpoint.archive.jsonl"
    kept = items.read_bytes()
    items.write_bytes(kept + b'[[9,9,9],0.5,12]\n[[9,9')  # killed between the append and its checkpoint
    resumed = RunStore.open(tmp_path / "run")
    assert resumed.read_checkpoint()["engine"]["archive"] == _pairs(8)
    resumed.write_checkpoint(_state(_pairs(10), 2))
    assert items.read_bytes() == kept + b"".join(
        (json.dumps(p, separators=(",", ":")) + "\n").encode() for p in _pairs(10)[8:])
    assert RunStore.open(tmp_path / "run").read_checkpoint()["engine"]["archive"] == _pairs(10)


def test_an_inline_checkpoint_of_an_older_evo_is_read_and_continued(tmp_path):
    store = RunStore.create(tmp_path / "run", {"search": {}})
    (tmp_path / "run" / "checkpoint.json").write_text(json.dumps({"format": 1, **_state(_pairs(6), 1)}))
    (tmp_path / "run" / "checkpoint.archive.jsonl").write_text("stale\n")  # referenced by no checkpoint
    resumed = RunStore.open(tmp_path / "run")
    assert resumed.read_checkpoint()["engine"]["archive"] == _pairs(6)
    resumed.write_checkpoint(_state(_pairs(9), 2))
    assert RunStore.open(tmp_path / "run").read_checkpoint()["engine"]["archive"] == _pairs(9)
    assert store.read_checkpoint()["generation"] == 2


def test_a_shrunk_or_reordered_archive_and_a_short_file_are_refused(tmp_path):
    store = RunStore.create(tmp_path / "run", {"search": {}})
    store.write_checkpoint(_state(_pairs(8), 1))
    with pytest.raises(RuntimeError, match="extension"):
        store.write_checkpoint(_state(_pairs(8)[::-1], 2))
    with pytest.raises(RuntimeError, match="extension"):
        store.write_checkpoint(_state(_pairs(5), 2))
    items = tmp_path / "run" / "checkpoint.archive.jsonl"
    items.write_bytes(items.read_bytes()[:-30])
    with pytest.raises(EvoError, match="shorter"):
        RunStore.open(tmp_path / "run").read_checkpoint()
    items.unlink()
    with pytest.raises(EvoError, match="missing"):
        RunStore.open(tmp_path / "run").read_checkpoint()


def test_a_resumed_deap_engine_continues_as_the_uninterrupted_one(tmp_path):
    """The archive read back from its file (in the order told) gives the same asks as the engine in memory."""
    import random

    from evo.search.engines import Score, make_engine
    from evo.search.engines.base import Problem
    from evo.types import Gene

    genes = tuple(Gene(name=f"g{i}", kind="bits", choices=(2, 3, 4, 8)) for i in range(12))
    problem = Problem(genes=genes, size_of=lambda g: 100 * sum(g), budget_bytes=100 * 24)

    def score(genome, stage):
        noise = random.Random(hash((genome, stage))).random()
        return Score(sum(1.0 / (1 + g) for g in genome) + 0.01 * noise, problem.size_of(genome))

    def advance(engine, store, generations):
        while engine.generation < generations or not engine.at_generation_boundary():
            requests = engine.ask()
            engine.tell([(r, score(r.genome, r.stage)) for r in requests])
            if engine.at_generation_boundary():
                store.write_checkpoint({"generation": engine.generation, "engine": engine.state_dict()})

    straight = make_engine("deap", problem, population=6, seed=3)
    advance(straight, RunStore.create(tmp_path / "a", {"search": {}}), 6)
    first = make_engine("deap", problem, population=6, seed=3)
    advance(first, RunStore.create(tmp_path / "b", {"search": {}}), 3)
    resumed = make_engine("deap", problem, population=6, seed=3)
    store = RunStore.open(tmp_path / "b")
    resumed.load_state_dict(store.read_checkpoint()["engine"])
    advance(resumed, store, 6)
    assert resumed.state_dict() == straight.state_dict()
    assert (tmp_path / "a" / "checkpoint.archive.jsonl").read_bytes() == (
        tmp_path / "b" / "checkpoint.archive.jsonl").read_bytes()
