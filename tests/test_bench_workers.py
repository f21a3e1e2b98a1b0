"""benchmarks/_workers.py: the worker processes (--jobs of ccds_vs_random.py and evop_vs_shortgpt.py):
each job in its own process with the parent's deadline, the shared work done while they start, the
table rewritten as each ends, a worker past the deadline stopped, unfinished jobs reported."""

from __future__ import annotations

import json
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import _workers  # noqa: E402
from _experiments import Deadline  # noqa: E402
from _workers import run_workers, start_deadline, unfinished  # noqa: E402

# A stand-in for a benchmark script: "--only LABEL" names its job; it waits for the parent's
# prepared.json like the real workers, then per label: ok writes a complete result, partial an
# incomplete one and exits 3, hang sleeps past any deadline, fail exits 1.
WORKER = '''
import json, os, sys, time
from pathlib import Path
argv = sys.argv[1:]
value = lambda name: argv[len(argv) - 1 - argv[::-1].index(name) + 1]
out, label, deadline_at = Path(value("--out")), value("--only"), float(value("--deadline-at"))
assert value("--jobs") == "1", argv
while not (out / "prepared.json").exists():
    time.sleep(0.05)
(out / "results").mkdir(exist_ok=True)
kind = label.split("-")[0]
if kind == "hang":
    time.sleep(60)
if kind == "fail":
    sys.exit(1)
(out / "results" / f"{label}.json").write_text(json.dumps({"complete": kind == "ok", "deadline_at": deadline_at,
    "share": os.environ.get("EVO_CUDA_MEMORY_SHARE")}))
sys.exit(0 if kind == "ok" else 3)
'''


def run(tmp_path: Path, labels: list[str], seconds: float, monkeypatch, jobs: int = 4):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(_workers, "WORKER_GRACE_S", 0.5)
    args = Namespace(out=str(out), jobs=jobs, threads=1, reserve_s=0.0)
    calls = {"prepare": 0, "finish": 0}

    def prepare() -> None:
        calls["prepare"] += 1
        time.sleep(0.3)  # the workers are already running: they wait for prepared.json
        assert not (out / "results").exists()
        (out / "prepared.json").write_text("{}")

    def on_finish() -> None:
        calls["finish"] += 1

    deadline = Deadline(seconds)
    not_done = run_workers(script, ["--out", str(out), "--jobs", str(jobs)], labels, args, deadline, on_finish,
                           prepare=prepare)
    return out, not_done, calls, deadline


def test_workers_share_the_deadline_and_report_what_did_not_finish(tmp_path, monkeypatch):
    labels = ["ok-s0", "ok-s1", "partial-s2", "fail-s3"]
    out, not_done, calls, deadline = run(tmp_path, labels, 30.0, monkeypatch)
    assert calls == {"prepare": 1, "finish": 4}
    assert sorted(not_done) == ["fail-s3", "partial-s2"]
    assert unfinished(out, labels) == ["partial-s2", "fail-s3"]  # no result, or an incomplete one
    result = json.loads((out / "results" / "ok-s0.json").read_text())
    assert abs(result["deadline_at"] - deadline.at()) < 1.0  # the parent's deadline, not one of its own
    assert (out / "logs" / "fail-s3.log").exists()
    assert result["share"] == "0.2250"  # four workers on one GPU: each plans within 0.9 / 4 of its memory


def test_a_worker_past_the_deadline_is_stopped_and_no_job_starts_too_late(tmp_path, monkeypatch):
    tic = time.perf_counter()
    out, not_done, calls, _ = run(tmp_path, ["hang-s0", "ok-s1"], 2.0, monkeypatch, jobs=1)
    assert time.perf_counter() - tic < 15  # stopped at the deadline + grace, not after its 60 s sleep
    assert not_done == ["hang-s0", "ok-s1"]  # ok-s1 waited for the only slot and found no time left
    assert not (out / "results" / "ok-s1.json").exists()


def test_a_worker_takes_the_deadline_it_is_given():
    args = Namespace(deadline_s=100.0, deadline_at=time.time() + 5.0)
    assert 4.0 < start_deadline(args).left() <= 5.0
    assert 99.0 < start_deadline(Namespace(deadline_s=100.0, deadline_at=None)).left() <= 100.0


def test_the_shared_driver_runs_the_jobs_here_and_writes_the_table_with_what_is_left(tmp_path, monkeypatch):
    import _experiments

    from _workers import UNFINISHED_EXIT, finished_result, result_path, run_experiment

    tokenizer = object()
    monkeypatch.setattr(_experiments, "share_loaded_models", lambda: None)
    monkeypatch.setattr(_experiments, "load_experiment_model", lambda args: Namespace(tokenizer=tokenizer))
    monkeypatch.setattr(_experiments, "cached_eval_texts", lambda tok, out, *, domains: {"tok": tok, "domains": domains})
    calls = {"prepare": 0, "jobs": [], "tables": 0}

    def prepare(args, out, say) -> dict:
        assert out == shared_out
        calls["prepare"] += 1
        return {"budget": 123, "dense": {"wikitext2": 9.0}}

    def render(out, dense, budget, args) -> tuple[dict, str]:
        calls["tables"] += 1
        return {"budget_bytes": budget}, f"| budget | {budget} | {dense['wikitext2']} |"

    def job(label, loaded, shared, texts, deadline):
        assert loaded.tokenizer is tokenizer and texts == {"tok": tokenizer, "domains": True}
        assert shared["budget"] == 123 and deadline.left() > 0
        calls["jobs"].append(label)
        if label == "later":
            return None  # not finished in this call
        path = result_path(shared_out, label)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"complete": True, "label": label}))
        return {"label": label}

    shared_out = tmp_path / "out"
    args = Namespace(out=str(shared_out), work_dir=None, jobs=1, threads=None, only=None, deadline_s=60.0,
                     deadline_at=None, reserve_s=0.0)
    code = run_experiment(tmp_path / "script.py", "demo", args, ["--x"], ["done", "later"], prepare=prepare,
                          render=render, job=job, domains=True)
    assert code == 0 and calls == {"prepare": 1, "jobs": ["done", "later"], "tables": 2}  # after "done", and last
    data = json.loads((shared_out / "demo.json").read_text())
    assert data == {"budget_bytes": 123, "pending": ["later"]}
    assert "| budget | 123 | 9.0 |" in (shared_out / "demo.md").read_text()
    assert finished_result(shared_out, "done") == {"complete": True, "label": "done"}
    assert finished_result(shared_out, "later") is None
    # a worker given --only runs its job alone after the parent's prepared.json, writes no table
    (shared_out / "prepared.json").write_text("{}")
    worker = Namespace(**{**vars(args), "only": "later"})
    assert run_experiment(tmp_path / "script.py", "demo", worker, [], ["done", "later"], prepare=prepare,
                          render=render, job=job, domains=True) == UNFINISHED_EXIT
    assert calls["jobs"][-1] == "later" and calls["tables"] == 2


def test_a_process_share_of_the_gpu_is_read_from_the_environment(monkeypatch):
    from evo.errors import EvoError
    from evo.evaluate.resident import process_share

    monkeypatch.delenv("EVO_CUDA_MEMORY_SHARE", raising=False)
    assert process_share() == 1.0
    monkeypatch.setenv("EVO_CUDA_MEMORY_SHARE", "0.25")
    assert process_share() == 0.25
    for bad in ("0", "1.5", "half"):
        monkeypatch.setenv("EVO_CUDA_MEMORY_SHARE", bad)
        with pytest.raises(EvoError, match="EVO_CUDA_MEMORY_SHARE"):
            process_share()


def test_workers_started_together_each_get_a_share_of_the_gpu():
    from evo.evaluate.resident import worker_environment

    assert worker_environment(4, {}) == {"EVO_CUDA_MEMORY_SHARE": "0.2250"}
    assert worker_environment(1, {}) == {}  # alone on the device: all of it
    assert worker_environment(4, {"EVO_CUDA_MEMORY_SHARE": "0.5"})["EVO_CUDA_MEMORY_SHARE"] == "0.5"  # the caller's


def test_search_quality_size_seeds_take_a_count_or_a_list():
    import argparse

    from search_quality import seed_list

    assert seed_list("3") == (0, 1, 2) and seed_list("1,2") == (1, 2)
    for bad in ("0", "1,1", "-1,2", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            seed_list(bad)


def test_ccds_and_random_are_compared_seed_by_seed():
    import math

    from ccds_vs_random import paired_by_seed

    def run(strategy, seed, wiki, c4):
        return {"strategy": strategy, "seed": seed, "ppl": {"wikitext2": wiki, "c4": c4}}

    rows = [run("ccds", 0, 10.0, 20.0), run("random", 0, 11.0, 20.0), run("ccds", 1, 12.0, 20.0),
            run("random", 1, 11.0, 20.0), run("ccds", 2, 9.0, 20.0), run("random", 2, 10.0, 20.0),
            run("ccds", 3, 9.0, 20.0)]  # seed 3 has no random twin: not a pair
    paired = paired_by_seed(rows, ["wikitext2", "c4"])
    wiki = paired["wikitext2"]
    assert wiki["pairs"] == 3 and wiki["lower"] == 2
    assert wiki["ratio"] == pytest.approx(math.exp((math.log(10 / 11) + math.log(12 / 11) + math.log(9 / 10)) / 3))
    assert 0 < wiki["t_p"] < 1 and 0 < wiki["wilcoxon_p"] <= 1
    assert paired["c4"] == {"pairs": 3, "lower": 0, "ratio": 1.0, "t_p": 1.0, "wilcoxon_p": 1.0}
    assert paired_by_seed(rows[:4], ["wikitext2"]) == {}  # two pairs: no test
