"""A run directory's life (issues 12 and 17): atomic creation, one process per run, stale locks and
temp files cleared, fail-fast checks before the first expensive step, resume traps, reruns that
change nothing, and one `error:` line (exit 2) for every malformed input.

Tiny random models, in-process CLI calls; subprocesses only where two processes are the point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evo.cli import main
from evo.errors import EvoError

GENERATIONS = 1
POPULATION = 4


def _corpus(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "prose.txt").write_text("The quick brown fox jumps over the lazy dog. " * 60)
    (directory / "digits.txt").write_text("0123456789 " * 200)
    (directory / "code.txt").write_text("def f(x):\n    return x * 2 + 1\n\n" * 80)
    return directory


def search_args(model_dir, corpus, budget_mb, *, generations=GENERATIONS, population=POPULATION, engine=()):
    return ["search", "--model", str(model_dir), "--corpus", str(corpus), "--budget-mb", f"{budget_mb:.6f}",
            "--generations", str(generations), "--population", str(population), "--samples", "4",
            "--seq-len", "32", "--clusters", "2", "--screen-sequences", "2", "--screen-tokens", "16",
            "--fitness", "ppl", *engine]


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def flat(text: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(text.split())


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    """Every file's mtime (ns) and bytes: equal snapshots mean nothing was written."""
    return {p.relative_to(directory).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def reach(tiny_model_dir, tmp_path_factory):
    """(mid budget, smallest, largest) in MB for the default space on the tiny Llama."""
    from evo.compress.size import SizeCache
    from evo.modelio import load_model
    from evo.search.budget import early_budget_range
    from evo.search.space import SearchSpace

    loaded = load_model(str(tiny_model_dir("llama")))
    r = early_budget_range(SearchSpace.load("default"), loaded, SizeCache(tmp_path_factory.mktemp("sizes")))
    return (r.smallest + 0.4 * (r.largest - r.smallest)) / 1e6, r.smallest / 1e6, r.largest / 1e6


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory, reach):
    """A finished one-generation run and its arguments (the quick start's shape, tiny)."""
    base = tmp_path_factory.mktemp("finished")
    args = search_args(tiny_model_dir("llama"), _corpus(base / "corpus"), reach[0])
    assert main([*args, "--run-dir", str(base / "run")]) == 0
    return base / "run", args


# --- issue 12 item 3: atomic creation ------------------------------------------------------------------


def test_an_interrupted_creation_is_treated_as_new(tmp_path):
    from evo.search.lifecycle import create_run_directory, is_complete_run
    from evo.search.store import RunStore

    partial = tmp_path / "run"
    partial.mkdir()
    (partial / "spec.json").write_text('{"search": {}}')  # what a kill between spec.json and run.json left
    (partial / ".spec.json.abc.tmp").write_text("half")
    lock = create_run_directory(partial, {"search": {"x": 1}})
    assert is_complete_run(partial) and json.loads((partial / "spec.json").read_text()) == {"search": {"x": 1}}
    assert not (partial / ".spec.json.abc.tmp").exists()
    lock.release()
    with pytest.raises(EvoError, match="already holds a run"):
        RunStore.create(partial, {"search": {}})
    # a staging directory a kill left beside the run is removed by the next creation
    stale = tmp_path / ".evo-creating-other-xyz"
    stale.mkdir()
    (stale / "spec.json").write_text("{}")
    create_run_directory(tmp_path / "other", {"search": {}}).release()
    assert not stale.exists()
    other = tmp_path / "foreign"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(EvoError, match="non-empty directory that is not an evo run"):
        create_run_directory(other, {})


def test_resume_of_an_interrupted_creation_says_to_start_it(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "spec.json").write_text("{}")
    code, _, err = run_cli(capsys, "search", "--resume", run)
    assert code == 2 and "start it again with --run-dir" in error_line(err)


# --- item 4: optuna's stale lock and absolute paths ---------------------------------------------------------


def test_optuna_journal_is_written_despite_a_stale_lock(tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    sys.path.insert(0, str(Path(__file__).parent))
    from test_engines import drive, make_problem

    from evo.search.engines import Problem, make_engine

    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(tmp_path)
    problem = Problem(**{**make_problem().__dict__, "workdir": Path("run")})  # a relative run directory
    os.symlink("gone/.optuna_journal.log.tmp", run / ".optuna_journal.log.tmp.lock")  # dangling, as a kill leaves it
    engine = make_engine("optuna", problem, population=4, seed=0)
    started = time.perf_counter()
    drive(engine, problem, generations=1)
    assert time.perf_counter() - started < 25  # optuna's own stale check never fires: it would spin forever
    assert (run / "optuna_journal.log").stat().st_size > 0
    assert not list(run.glob(".optuna_journal.log.tmp*"))


# --- item 5: one process per run ------------------------------------------------------------------------------


def test_a_second_process_on_a_run_is_refused_with_the_pid(finished, tmp_path):
    from evo.search.lifecycle import RunLock

    run, args = finished
    lock = RunLock.acquire(run)
    try:
        with pytest.raises(EvoError, match=rf"is in use by PID {os.getpid()}"):
            RunLock.acquire(run)
        command = [sys.executable, "-m", "evo.cli", "search", "--resume", str(run)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2
        assert f"run {run} is in use by PID {os.getpid()}" in error_line(result.stderr)
    finally:
        lock.release()
    RunLock.acquire(run).release()  # free again once released


# --- item 6: what the bytes depend on ------------------------------------------------------------------------


def test_the_resolved_dtype_is_recorded_and_another_is_refused(finished, capsys):
    run, args = finished
    spec = json.loads((run / "spec.json").read_text())["search"]
    assert spec["dtype"] == "float32"  # "auto" on CPU, resolved and recorded
    before = (run / "spec.json").read_bytes()
    code, _, err = run_cli(capsys, "search", "--resume", run, "--dtype", "bfloat16")
    assert code == 2 and "dtype 'float32' in the run, 'bfloat16' asked" in error_line(err)
    assert (run / "spec.json").read_bytes() == before


def test_the_artifact_tokenizer_does_not_depend_on_the_environment(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from evo.compress.artifact import save_tokenizer

    model_dir = tiny_model_dir("llama")
    written = []
    for name, kwargs in (("online", {}), ("offline", {"local_files_only": True})):
        save_tokenizer(tmp_path / name, AutoTokenizer.from_pretrained(str(model_dir), **kwargs))
        written.append((tmp_path / name / "tokenizer_config.json").read_bytes())
    assert written[0] == written[1]
    assert b"local_files_only" not in written[0] and b"is_local" not in written[0]


def test_a_refused_export_leaves_nothing_behind(finished, tmp_path, capsys):
    import shutil

    run, _ = finished
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".lock"))
    front = json.loads((copy / "front.json").read_text())
    for point in front["front"]:
        point["size_bytes"] -= 1  # the run recorded other bytes than this evo writes
    (copy / "front.json").write_text(json.dumps(front))
    code, _, err = run_cli(capsys, "export", copy, "--out", tmp_path / "out", "--budget-mb", "1000")
    assert code == 2 and "nothing was written" in error_line(err)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".evo-")]


# --- item 7: one line, exit 2 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", ["nan", "inf", "-inf", "1e400", "0", "-3"])
def test_a_budget_that_is_no_number_of_mb_is_one_line(budget, tmp_path, capsys):
    code, _, err = run_cli(capsys, "search", f"--budget-mb={budget}", "--run-dir", tmp_path / "run")
    assert code == 2 and "give a finite positive number of MB" in error_line(err)
    assert not (tmp_path / "run").exists()


def test_export_budget_nan_and_paths_naming_files_are_one_line(finished, tmp_path, capsys):
    run, args = finished
    code, _, err = run_cli(capsys, "export", run, "--out", tmp_path / "x", "--budget-mb", "nan")
    assert code == 2 and "--budget-mb nan" in error_line(err)
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    code, _, err = run_cli(capsys, "export", run, "--out", a_file)
    assert code == 2 and "is a file, not a directory" in error_line(err)
    code, _, err = run_cli(capsys, *args, "--run-dir", a_file)
    assert code == 2 and "is a file, not a directory" in error_line(err)
    code, _, err = run_cli(capsys, *args, "--run-dir", a_file / "below")
    assert code == 2 and "is a file, not a directory" in error_line(err)


def test_a_corpus_of_nul_bytes_is_one_line_before_the_model_loads(tiny_model_dir, tmp_path, capsys, reach):
    corpus = tmp_path / "nul.txt"
    corpus.write_bytes(b"\x00" * 5000 + b"\n\n" + b"\x00\x01\x02" * 100)
    args = search_args(tiny_model_dir("llama"), corpus, reach[0])
    code, _, err = run_cli(capsys, *args, "--run-dir", tmp_path / "run")
    assert code == 2 and "corpus is empty" in error_line(err)
    assert "loading model" not in flat(err) and not (tmp_path / "run").exists()


def test_malformed_checkpoint_and_spec_are_one_line(finished, tmp_path, capsys):
    import shutil

    run, _ = finished
    cases = {
        "checkpoint.json": [{"format": 1}, {"format": 1, "generation": "1", "engine": {}},
                            {"format": 1, "generation": 1, "engine": {"engine": "deap"}}, [1, 2], "x"],
        "spec.json": [{"search": {"budget_bytes": "70"}}, {"search": []}, [], {"search": {"bogus": 1}}],
    }
    for name, contents in cases.items():
        for content in contents:
            copy = tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}"
            shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".lock"))
            (copy / name).write_text(json.dumps(content))
            code, _, err = run_cli(capsys, "search", "--resume", copy)
            assert code == 2, (name, content, err)
            assert "cannot be resumed" in error_line(err) or "setting" in error_line(err), (name, content, err)


def test_an_unreadable_size_cache_entry_is_recomputed(tmp_path):
    from evo.compress.size import SizeCache, SizeEntry, SizeKey

    cache = SizeCache(tmp_path)
    key = SizeKey("m", "t", "s")
    cache.put(key, SizeEntry(10, 1.0))
    path = next(tmp_path.rglob("*.json"))
    for garbage in (b'{"format": 1, "k\xff": 2}', b"[" * 100_000 + b"]" * 100_000, b'{"format": 1, "key": 3}'):
        path.write_bytes(garbage)
        assert SizeCache(tmp_path).get(key) is None


def test_malformed_artifact_files_are_one_line(tiny_llama, tiny_tokenizer, tmp_path):
    import shutil

    from evo.compress.artifact import load, read_manifest, write_artifact
    from evo.compress.config import CompressionConfig
    from evo.compress.model import compress_model
    from evo.compress.coding import EncodedTensor, decode_tensor, encode_tensor
    from evo.compress.settings import TensorSetting
    from evo.compress.quantize import quantize
    from evo.modelio import describe_model

    info = describe_model(tiny_llama, model_id="tiny")
    result = compress_model(tiny_llama, info, CompressionConfig())
    art = tmp_path / "art"
    write_artifact(art, tiny_llama, tiny_tokenizer, result, base_model="tiny")
    nested = tmp_path / "nested"
    shutil.copytree(art, nested)
    (nested / "manifest.json").write_bytes(b"[" * 200_000 + b"]" * 200_000)
    with pytest.raises(EvoError, match="truncated or corrupt|nested too deeply"):
        read_manifest(nested)
    garbage = tmp_path / "garbage"
    shutil.copytree(art, garbage)
    (garbage / "generation_config.json").write_text('{"max_new_tokens": "lots", "num_beams": {"a": 1}}')
    with pytest.raises(EvoError, match="generation_config.json"):
        load(garbage)
    # a scales frame of the wrong length
    import torch

    setting = TensorSetting(bits=4, group_size=32)
    weight = torch.randn(8, 64)
    encoded = encode_tensor(quantize(weight, setting))
    other = encode_tensor(quantize(torch.randn(8, 128), setting))
    frames = {**encoded.frames, "scales": other.frames["scales"]}
    with pytest.raises(EvoError, match="scales"):
        decode_tensor(EncodedTensor(frames, encoded.coders, 0.0), (8, 64), setting)


# --- item 8: smaller ----------------------------------------------------------------------------------------


def test_a_duplicated_journal_line_is_refused(finished, tmp_path, capsys):
    import shutil

    run, _ = finished
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".lock"))
    lines = (copy / "journal.jsonl").read_text().splitlines(keepends=True)
    (copy / "journal.jsonl").write_text("".join(lines[:2] + lines[1:2] + lines[2:]))
    code, _, err = run_cli(capsys, "search", "--resume", copy)
    assert code == 2 and "repeats evaluation" in error_line(err)


def test_resume_cleans_temp_files_and_a_refused_resume_writes_nothing(finished, tmp_path, capsys):
    import shutil

    run, _ = finished
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".lock"))
    leftovers = [copy / ".front.json.k2j3.tmp", copy / "size_cache" / "ab" / ".abcd.json.x1.tmp"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half a write")
    before = snapshot(copy)
    code, _, err = run_cli(capsys, "search", "--resume", copy, "--seed", "7")
    assert code == 2 and "seed 0 in the run, 7 asked" in error_line(err)
    assert snapshot(copy) == before  # refused: spec.json and everything else untouched
    code, _, err = run_cli(capsys, "search", "--resume", copy)
    assert code == 0, err
    assert not any(path.exists() for path in leftovers)


def test_a_refused_command_leaves_no_run_directory(tiny_model_dir, tmp_path, capsys, reach):
    corpus = _corpus(tmp_path / "corpus")
    run = tmp_path / "run"
    for budget, message in ((reach[1] * 0.5, "below the smallest"), (reach[2] * 1.5, "at or above the largest")):
        code, _, err = run_cli(capsys, *search_args(tiny_model_dir("llama"), corpus, budget), "--run-dir", run)
        assert code == 2 and message in error_line(err)
        assert "drawing the CCDS" not in flat(err) and "resuming" not in flat(err)  # refused before the first costly step
        assert not run.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".evo-")]
    code, _, err = run_cli(capsys, *search_args(tiny_model_dir("llama"), tmp_path / "missing", reach[0]),
                           "--run-dir", run)
    assert code == 2 and "does not exist" in error_line(err) and "loading model" not in flat(err)
    assert not run.exists()


def test_a_model_path_with_a_trailing_slash_is_the_same_run(finished, capsys):
    run, args = finished
    model = args[args.index("--model") + 1]
    with_slash = [a if a != model else model + "/" for a in args]
    code, _, err = run_cli(capsys, *with_slash, "--run-dir", str(run) + "/")
    assert code == 0, err
    assert "resuming run" in flat(err)


# --- issue 17: reruns, resume traps ----------------------------------------------------------------------------


def test_rerunning_search_then_export_changes_nothing(finished, tmp_path, capsys):
    run, args = finished
    out = run / "export"
    code, _, err = run_cli(capsys, "export", run, "--out", out)
    assert code == 0, err
    before, run_before = snapshot(out), snapshot(run)
    code, stdout, err = run_cli(capsys, *args, "--run-dir", run)
    assert code == 0 and "(0 in this process)" in flat(stdout), err
    started = time.perf_counter()
    code, stdout, err = run_cli(capsys, "export", run, "--out", out)
    assert code == 0 and "nothing to do" in flat(stdout), err
    assert time.perf_counter() - started < 10  # no model is loaded for a no-op
    assert snapshot(out) == before
    assert snapshot(run) == run_before
    # another export into the same place is still refused unless --overwrite
    smallest = min(p["size_bytes"] for p in json.loads((run / "front.json").read_text())["front"])
    largest = max(p["size_bytes"] for p in json.loads((run / "front.json").read_text())["front"])
    if smallest < largest:
        code, _, err = run_cli(capsys, "export", run, "--out", out, "--budget-mb", f"{smallest / 1e6:.6f}")
        assert code == 2 and "pass --overwrite" in error_line(err)
        assert snapshot(out) == before


def test_resume_keeps_the_runs_generations_unless_asked_to_extend(finished, tmp_path, capsys):
    import shutil

    run, args = finished
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".lock", "export"))
    journal = (copy / "journal.jsonl").read_bytes()
    # the command Ctrl-C prints: --resume alone, with the run's own settings
    code, stdout, err = run_cli(capsys, "search", "--resume", copy)
    assert code == 0, err
    assert f"({GENERATIONS} generations" in flat(err) and (copy / "journal.jsonl").read_bytes() == journal
    assert json.loads((copy / "spec.json").read_text())["search"]["generations"] == GENERATIONS
    code, stdout, err = run_cli(capsys, "search", "--resume", copy, "--generations", str(GENERATIONS + 1))
    assert code == 0, err
    assert f"extending run {copy} from {GENERATIONS} to {GENERATIONS + 1} generations" in flat(err)
    assert json.loads((copy / "spec.json").read_text())["search"]["generations"] == GENERATIONS + 1
    assert len((copy / "journal.jsonl").read_bytes()) > len(journal)


def test_the_interrupt_hint_names_a_command_that_works(finished, tmp_path, capsys, monkeypatch):
    import shutil

    import evo.search.loop as loop

    run, args = finished
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".lock", "export"))

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "run_search", interrupted)
    code, _, err = run_cli(capsys, *args, "--run-dir", copy)
    assert code == 130
    hint = flat(err)[flat(err).index("`") + 1: flat(err).rindex("`")]
    assert hint == f"evo search --resume {copy}"
    monkeypatch.undo()
    code, _, err = run_cli(capsys, *hint.split()[1:])
    assert code == 0, err


HOLDER = r"""
import os, sys, time
from evo.search.lifecycle import RunLock

lock = RunLock.acquire(sys.argv[1])
child = os.fork()
if child == 0:  # a forked worker, as a fork-context process pool starts them
    # the child says its PID itself: fork's after-in-child hooks have run by then (the parent printing
    # it raced with a child not yet scheduled on a loaded machine: CI saw the lock still held)
    print(os.getpid(), flush=True)
    time.sleep(60)
    os._exit(0)
time.sleep(60)
"""


def test_a_forked_child_does_not_keep_the_lock_of_a_killed_parent(tmp_path):
    import signal

    from evo.search.lifecycle import RunLock

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(EvoError, match=f"in use by PID {holder.pid}"):
            RunLock.acquire(tmp_path)  # the parent holds it
        holder.kill()  # SIGKILL: the lock must die with it, though its forked child lives on
        holder.wait()
        os.kill(child, 0)  # still alive
        RunLock.acquire(tmp_path).release()
    finally:
        holder.kill()
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
