"""The worker processes of the GPU experiment scripts (ccds_vs_random.py, evop_vs_shortgpt.py), and
the driver both share (run_experiment):
--jobs N runs N of a script's jobs side by side, each in its own process started with the script's
own command line + --only LABEL and the parent's deadline (--deadline-at), sharing one GPU. The
parent does the work the jobs share while they start (they load the model meanwhile and wait for
its prepared.json), rewrites the table whenever one ends, and stops any still running
WORKER_GRACE_S after the deadline."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from _experiments import Deadline
from _searchbench import write_json
from evo.evaluate.resident import worker_environment


def start_deadline(args) -> Deadline:
    """--deadline-at (a worker: the parent's end, time.time() seconds) or --deadline-s from now."""
    if getattr(args, "deadline_at", None) is not None:
        return Deadline(args.deadline_at - time.time())
    return Deadline(args.deadline_s)


def add_worker_options(parser) -> None:
    """--jobs: the script's jobs in that many worker processes at once (one GPU shared), each with
    the call's deadline; --threads: torch (and OpenMP/BLAS) threads per process; --work-dir: where the
    bulky files go. --only and --deadline-at are what a parent gives its workers."""
    parser.add_argument("--jobs", type=int, default=1,
                        help="jobs run side by side, each in its own process (1: one after another in this one)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per process (default: the cores / --jobs)")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline-at", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", default=None,
                        help="the bulky files: run directories, artifacts, the size cache, tokenized texts "
                             "(default: --out, which keeps the tables, results, logs and budget)")


def experiment_parser(description: str) -> argparse.ArgumentParser:
    """The options parser of a script run_experiment drives: the experiments' common options
    (_experiments.add_common_options) and the worker options; the script adds its own."""
    from _experiments import add_common_options

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser)
    add_worker_options(parser)
    return parser


UNFINISHED_EXIT = 3  # a worker's exit status when one of its jobs has no result in this call
WORKER_GRACE_S = 20.0  # a worker still running this long after the deadline is stopped


PREPARED_FILE = "prepared.json"  # written by a parent once the work its jobs share is on disk


def mark_prepared(out: Path, what: dict) -> None:
    write_json(Path(out) / PREPARED_FILE, what)


def wait_until_prepared(out: Path, deadline: Deadline, say) -> bool:
    """A worker started before its parent's shared work was done (the model loads meanwhile) waits
    here for it; False when the deadline comes first."""
    path = Path(out) / PREPARED_FILE
    if not path.exists():
        say("waiting for the shared budget, size table, texts and dense PPL")
    while not path.exists():
        if deadline.left() <= 0:
            return False
        time.sleep(0.5)
    return True


def run_workers(script: Path, argv: list[str], labels: list[str], args, deadline: Deadline, on_finish,
                prepare=None) -> list[str]:
    """Each job label in its own process (`script` with this call's argv + --only LABEL and this
    call's deadline as --deadline-at), at most --jobs at a time, sharing the GPU; logs in
    out/logs/LABEL.log. No job starts with less than --reserve-s left; a worker still running
    WORKER_GRACE_S after the deadline is stopped. prepare(): the shared work, run here once the
    first workers are started (they load the model meanwhile and wait for PREPARED_FILE).
    on_finish() is called whenever a worker ends (to write the table from every result on disk).
    Returns the labels that did not finish."""
    logs = Path(args.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = args.threads or max(1, (os.cpu_count() or 2) // max(1, min(args.jobs, len(labels))))
    base = [sys.executable, str(script), *argv, "--jobs", "1", "--threads", str(threads),
            "--deadline-at", f"{deadline.at():.3f}"]
    # OpenMP/BLAS pools (k-means, numpy) sized like torch's: N workers of all cores each would oversubscribe
    env = {**os.environ, **{name: os.environ.get(name, str(threads)) for name in ("OMP_NUM_THREADS",
                                                                                    "OPENBLAS_NUM_THREADS")}}
    # on a GPU, each worker plans its level cache and micro-batches within its share of the device: all of
    # them start together and would each see the whole device free (evo.evaluate.resident.process_share)
    env = worker_environment(max(1, min(args.jobs, len(labels))), env)
    waiting, running, not_done = list(labels), {}, []
    while waiting or running:
        while waiting and len(running) < args.jobs:
            label = waiting.pop(0)
            if deadline.left() < args.reserve_s:
                print(f"{label} not started: less than --reserve-s {args.reserve_s:.0f} s left", flush=True)
                not_done.append(label)
                continue
            log = open(logs / f"{label}.log", "a")
            process = subprocess.Popen(base + ["--only", label], stdout=log, stderr=subprocess.STDOUT, env=env)
            running[label] = (process, log, time.perf_counter())
            print(f"started {label} (pid {process.pid}, log {logs / (label + '.log')})", flush=True)
        if prepare is not None:
            try:
                prepare()
            except BaseException:
                for process, log, _ in running.values():  # they would wait for it until the deadline
                    process.terminate()
                    process.wait()
                    log.close()
                raise
            prepare = None
        time.sleep(1.0)
        for label, (process, log, tic) in list(running.items()):
            if process.poll() is None and deadline.left() > -WORKER_GRACE_S:
                continue
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                print(f"{label} stopped {WORKER_GRACE_S:.0f} s after the deadline", flush=True)
            log.close()
            del running[label]
            code = process.returncode
            print(f"{label} ended with exit code {code} after {time.perf_counter() - tic:.0f} s", flush=True)
            if code != 0:
                not_done.append(label)
                if code != UNFINISHED_EXIT:
                    print("".join((logs / f"{label}.log").read_text().splitlines(keepends=True)[-20:]), flush=True)
            on_finish()
    return not_done


def result_path(out: Path, label: str) -> Path:
    """Where a job's result goes: out/results/LABEL.json."""
    return Path(out) / "results" / f"{label}.json"


def finished_result(out: Path, label: str) -> dict | None:
    """The job's complete result, or None (no result yet, or one a deadline stopped: "complete": false)."""
    path = result_path(out, label)
    if path.exists():
        data = json.loads(path.read_text())
        if data.get("complete", True):
            return data
    return None


def unfinished(out: Path, labels: list[str]) -> list[str]:
    """The job labels without a complete result in out/results (LABEL.json)."""
    return [label for label in labels if finished_result(out, label) is None]


def run_experiment(script: Path, name: str, args, argv: list[str] | None, labels: list[str], *, prepare, render,
                   job, domains: bool) -> int:
    """The driver of a GPU experiment script (ccds_vs_random.py, evop_vs_shortgpt.py) once its options
    are parsed. The parent of --jobs > 1 runs each label's job in a worker process (run_workers), does
    the shared work meanwhile with prepare(args, out, say) -> shared (a dict with "budget" and "dense",
    the dense model's PPL) and rewrites the table whenever a worker ends; otherwise (--jobs 1, or a
    worker given --only) the jobs run one after another in this process while the deadline allows:
    job(label, loaded, shared, texts, deadline) returns its result, or None when it did not finish.
    render(out, dense, budget, args) -> (data, markdown) is the table, written as OUT/NAME.json and
    .md with the unfinished labels. Returns the exit status."""
    import torch

    from _experiments import (cached_eval_texts, load_experiment_model, run_until_deadline, say_as,
                              share_loaded_models, work_dir, write_with_pending)
    from _searchbench import free_gpu

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work_dir(args).mkdir(parents=True, exist_ok=True)
    deadline = start_deadline(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    argv = list(argv if argv is not None else sys.argv[1:])
    command = [Path(sys.argv[0]).name, *argv]
    say = say_as(name)
    shared: dict = {}

    def write_table(final: bool) -> None:
        data, table = render(out, shared["dense"], shared["budget"], args)
        write_with_pending(out, name, data, table, command, unfinished(out, labels), echo=final)

    def prepare_shared() -> None:
        shared.update(prepare(args, out, say))
        free_gpu()
        mark_prepared(out, {"budget_bytes": shared["budget"]})

    if args.only is None and args.jobs > 1:  # the parent: each job in a worker process, the shared work here
        run_workers(script, argv, labels, args, deadline, on_finish=lambda: write_table(False), prepare=prepare_shared)
        write_table(True)
        return 0
    share_loaded_models()
    loaded = load_experiment_model(args)
    if args.only is not None and not wait_until_prepared(out, deadline, say):
        return UNFINISHED_EXIT
    shared.update(prepare(args, out, say))  # a worker reads what its parent wrote
    texts = cached_eval_texts(loaded.tokenizer, work_dir(args), domains=domains)
    chosen = [label for label in labels if args.only is None or label in args.only.split(",")]
    pending = run_until_deadline(
        [(label, partial(job, label, loaded, shared, texts, deadline)) for label in chosen], deadline, args.reserve_s,
        on_finish=None if args.only else lambda: write_table(False))
    if args.only is not None:  # a worker: the parent writes the table
        return UNFINISHED_EXIT if pending else 0
    write_table(True)
    return 0


__all__ = ["PREPARED_FILE", "UNFINISHED_EXIT", "WORKER_GRACE_S", "add_worker_options", "experiment_parser",
           "finished_result", "mark_prepared", "result_path", "run_experiment", "run_workers", "start_deadline",
           "unfinished", "wait_until_prepared"]
