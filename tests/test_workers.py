"""`evo search --workers N` on Ray: N actors end with the same front as one; an actor killed mid-batch
loses nothing and journals nothing twice; a driver killed -9 with workers attached resumes to the same
front. One local Ray cluster (2 CPU slots, 200 MB object store) serves the in-process tests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from evo.errors import EvoError  # noqa: E402
from evo.search.loop import SearchSpec, open_session, run_search  # noqa: E402
from evo.search.workers import WorkerPool, WorkerSettings  # noqa: E402


def _corpus(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "prose.txt").write_text("The quick brown fox jumps over the lazy dog. " * 60)
    (directory / "code.txt").write_text("def f(x):\n    return x * 2 + 1\n\n" * 80)
    return directory


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, num_gpus=0, object_store_memory=200 * 10**6, include_dashboard=False,
             log_to_driver=False, logging_level="error")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def setting(tiny_model_dir, tmp_path_factory):
    """A tiny search (bits space, 2 generations of 4) and its budget, shared by the tests."""
    from evo.compress.size import SizeCache
    from evo.modelio import load_model
    from evo.search.budget import early_budget_range
    from evo.search.space import SearchSpace

    tmp = tmp_path_factory.mktemp("workers")
    model = tiny_model_dir("llama")
    reach = early_budget_range(SearchSpace.load("bits"), load_model(str(model)), SizeCache(tmp / "sizes"))
    budget = int(reach.smallest + 0.4 * (reach.largest - reach.smallest))
    spec = SearchSpec(budget_bytes=budget, model=str(model), corpus=(str(_corpus(tmp / "corpus")),), space="bits",
                      samples=4, seq_len=32, clusters=2, screen_sequences=2, screen_tokens=16, generations=2,
                      population=4, fitness="kl", dtype="float32")
    return spec, tmp


def _search(spec, run_dir, workers=None, on_progress=None):
    session = open_session(spec, run_dir, resume=(run_dir / "run.json").exists())
    pool = WorkerPool.start(session, WorkerSettings(workers)) if workers else None
    try:
        return run_search(session, size_workers=1, workers=pool,
                          on_progress=(lambda p: on_progress(p, pool)) if on_progress else None), pool
    finally:
        if pool is not None:
            pool.close()


def _front(run_dir: Path) -> list:
    return json.loads((run_dir / "front.json").read_text())["front"]


def _keys(run_dir: Path) -> list[str]:
    return [json.loads(line)["key"] for line in (run_dir / "journal.jsonl").read_text().splitlines()]


def _straight(spec, tmp: Path) -> Path:
    """The one-worker run every other run is compared with (made once)."""
    run_dir = tmp / "one"
    if not (run_dir / "checkpoint.json").exists():
        _search(spec, run_dir, workers=1)
    return run_dir


def _command(spec) -> list[str]:
    """`evo search` with the options of `spec` (the setting's search)."""
    return [sys.executable, "-m", "evo.cli", "search", "--model", spec.model, "--corpus", *spec.corpus,
            "--space", "bits", "--budget-mb", f"{spec.budget_bytes / 1e6:.6f}", "--generations", "2",
            "--population", "4", "--samples", "4", "--seq-len", "32", "--clusters", "2",
            "--screen-sequences", "2", "--screen-tokens", "16", "--dtype", "float32", "--size-workers", "1",
            "--device", "cpu"]


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow  # ~35 s on 2 shared cores: two searches and four actors
def test_two_workers_give_the_same_front_as_one(setting, local_ray):
    spec, tmp = setting
    one = _straight(spec, tmp)
    two, pool = _search(spec, tmp / "two", workers=2)
    assert _front(tmp / "two") == _front(one)
    assert _keys(tmp / "two") == _keys(one)  # journaled in the engine's order, whatever actor finished first
    assert all(rate.evaluations > 0 for rate in pool.rates())  # both actors took part
    # the size table the actors coded is the one a local process codes, byte for byte
    session = open_session(spec, tmp / "local", resume=False)
    session.fill_size_table(workers=1)
    assert _files(tmp / "local" / "size_cache") == _files(one / "size_cache")


def test_an_actor_killed_mid_batch_loses_nothing(setting, local_ray):
    spec, tmp = setting
    straight = _straight(spec, tmp)
    killed = []

    def kill_one(progress, pool):
        if not killed and progress.new_evaluations == 3 and len(pool.actors) == 2:
            ray.kill(pool.actors[0])  # mid-batch: it holds queued candidates
            killed.append(progress.new_evaluations)

    _, pool = _search(spec, tmp / "killed", workers=2, on_progress=kill_one)
    assert killed and pool.requeued >= 1 and [r.alive for r in pool.rates()] == [False, True]
    keys = _keys(tmp / "killed")
    assert len(keys) == len(set(keys))  # nothing journaled twice
    assert keys == _keys(straight)  # nothing lost
    assert _front(tmp / "killed") == _front(straight)


def test_every_worker_dead_is_one_error_and_the_journal_keeps_what_finished(setting, local_ray):
    spec, tmp = setting

    def kill_all(progress, pool):
        if progress.new_evaluations == 2:
            for actor in pool.actors:
                ray.kill(actor)

    with pytest.raises(EvoError, match="every Ray worker has died"):
        _search(spec, tmp / "dead", workers=2, on_progress=kill_all)
    keys = _keys(tmp / "dead")
    assert len(keys) >= 2 and len(keys) == len(set(keys))


def test_worker_settings_are_checked():
    with pytest.raises(EvoError, match="--workers"):
        WorkerSettings(0)
    with pytest.raises(EvoError, match="--ray-address"):
        WorkerSettings(2, address=" ")


@pytest.mark.slow  # ~2-3 min on 2 shared cores: two CLI runs that start Ray
def test_resume_after_kill_9_of_the_driver_with_workers_ends_with_the_same_front(setting, local_ray, tmp_path):
    import psutil

    spec, tmp = setting
    straight = _straight(spec, tmp)
    run_dir = tmp_path / "killed"
    command = _command(spec)
    process = subprocess.Popen(command + ["--workers", "2", "--run-dir", str(run_dir)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    journal = run_dir / "journal.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    children = psutil.Process(process.pid).children(recursive=True)  # Ray's processes and actors
    assert children
    process.kill()  # SIGKILL: the driver
    process.wait()
    journaled = len(journal.read_text().splitlines())
    resumed = subprocess.run(command + ["--workers", "1", "--resume", str(run_dir)], capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{journaled} evaluations journaled" in resumed.stdout + resumed.stderr
    keys = _keys(run_dir)
    assert len(keys) == len(set(keys)) and sorted(keys) == sorted(_keys(straight))
    for name in ("front.json", "checkpoint.json", "best.toml"):
        assert (run_dir / name).read_bytes() == (straight / name).read_bytes(), name
    # the killed driver's cluster shares its fate (raylet, GCS, actors at once; Ray's agents give up on
    # reporting to the dead GCS within about a minute)
    _, alive = psutil.wait_procs(children, timeout=120)
    assert not alive, f"Ray processes outlived their driver: {[p.pid for p in alive]}"


GPTQ_SPACE = """
name = "tiny-gptq"
granularity = "group"
[quantization]
group_size = 32
[genes]
bits = [2, 4]
quantizer = ["rtn", "gptq"]
[structure]
drop = ["none"]
[embedding]
bits = [8]
"""


def test_a_gptq_space_runs_on_workers_with_the_same_front_as_one(setting, local_ray):
    """Each actor opens the run's Hessians and builds its own level database, the actors splitting the
    coding of the sizes; 2 actors give what 1 gives."""
    from evo.compress.size import SizeCache
    from evo.modelio import load_model
    from evo.search.budget import early_budget_range
    from evo.search.space import SearchSpace

    spec, tmp = setting
    space = tmp / "gptq.toml"
    space.write_text(GPTQ_SPACE)
    reach = early_budget_range(SearchSpace.load(str(space)), load_model(spec.model), SizeCache(tmp / "gptq-sizes"))
    gptq = replace(spec, space=str(space), generations=1,
                   budget_bytes=int(reach.smallest + 0.5 * (reach.largest - reach.smallest)))
    _search(gptq, tmp / "gptq-one", workers=1)
    session = open_session(gptq, tmp / "gptq-two", resume=False)
    with WorkerPool.start(session, WorkerSettings(2)) as pool:
        run_search(session, size_workers=1, workers=pool)
    assert all(rate.evaluations > 0 for rate in pool.rates())
    # the actors coded the sizes (half each) and built the levels: the driver built no level database
    assert session.levels is None and session.size_table.filled
    assert _front(tmp / "gptq-two") == _front(tmp / "gptq-one")
    assert _keys(tmp / "gptq-two") == _keys(tmp / "gptq-one")
    hessians = json.loads((tmp / "gptq-two" / "spec.json").read_text())["hessians"]
    assert hessians["digest"] and (tmp / "gptq-two" / "hessians" / "meta.json").is_file()


@pytest.mark.slow  # ~1-2 min on 2 shared cores: a Ray head started by `ray start`, and one CLI run that joins it
def test_ray_address_joins_an_existing_cluster_with_the_same_front(setting, local_ray, tmp_path):
    import os
    import shutil
    import socket
    import tempfile

    import psutil

    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    if not Path(ray_cli).is_file():
        pytest.skip("the `ray` command is not installed")
    spec, tmp = setting
    straight = _straight(spec, tmp)
    with socket.socket() as probe:  # a free port for the head's GCS
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # a throwaway local cluster: no token to hand around
    log = tmp_path / "head.log"
    # its own temp dir (short: it holds Unix sockets), so /tmp/ray/ray_current_cluster (which a plain
    # ray.init() would join) is left alone
    temp_dir = tempfile.mkdtemp(prefix="evo-ray-", dir="/tmp")
    with open(log, "w") as handle:
        head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
                                 f"--temp-dir={temp_dir}",
                                 "--num-cpus=2", "--num-gpus=0", "--object-store-memory=200000000",
                                 "--include-dashboard=false", "--disable-usage-stats"],
                                stdout=handle, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        run_dir = tmp_path / "joined"
        result = subprocess.run(_command(spec) + ["--workers", "2", "--ray-address", f"127.0.0.1:{port}",
                                                  "--run-dir", str(run_dir)],
                                capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"joining the Ray cluster at 127.0.0.1:{port}" in result.stdout + result.stderr
        assert _keys(run_dir) == _keys(straight)
        assert _front(run_dir) == _front(straight)
    finally:
        processes = psutil.Process(head.pid).children(recursive=True) if head.poll() is None else []
        head.terminate()  # `ray start --block` stops the cluster it started on SIGTERM
        head.wait(timeout=60)
        _, alive = psutil.wait_procs(processes, timeout=60)
        for process in alive:  # what did not stop in a minute
            process.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not alive, f"the head's processes outlived it: {[p.pid for p in alive]}"


def test_more_workers_than_gpus_is_refused_before_the_run_directory_exists(tiny_model_dir, tmp_path, monkeypatch,
                                                                           capsys):
    import torch

    from evo.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a one-GPU machine, as far as evo asks
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(EvoError, match="--workers 2 asks for one GPU each but this machine has 1"):
        WorkerSettings(2).check_local("cuda")
    WorkerSettings(2, address="10.0.0.1:6379").check_local("cuda")  # a joined cluster says what it has
    WorkerSettings(2).check_local("cpu")  # one CPU slot each
    run_dir = tmp_path / "run"
    code = main(["search", "--model", str(tiny_model_dir("llama")), "--budget-mb", "1", "--device", "cuda",
                 "--workers", "2", "--run-dir", str(run_dir)])
    assert code != 0 and "asks for one GPU each" in capsys.readouterr().err.replace("\n", " ")
    assert not run_dir.exists()
