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
