"""Shared pieces of the GPU experiment scripts (evopress_scale.py, ccds_vs_random.py,
evop_vs_shortgpt.py): a wall-clock deadline that stops a search between evaluations (every
finished evaluation is journaled, so the next call resumes it), held-out perplexity of an exported
artifact on WikiText-2, C4 and each domain of the embedded corpus's held-out slice, the uniform
3-bit RTN budget, one loaded model shared by every run of a process, and JSON + markdown output.

Everything resumes: a search's run directory, an export's result JSON. A call that runs out of
time prints what is left and exits 0; the same command continues.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's evo, not an installed one

from _searchbench import free_gpu, say_as, write_json  # noqa: E402
from _common import bytes_on_disk  # noqa: E402
from evo.constants import MB, SIZE_CACHE_DIR  # noqa: E402

SEQ_LEN = 512  # held-out perplexity windows
DOMAIN_CORPUS = "calibration_mix_heldout"  # the embedded corpus's last 5 % of each file: never calibrated on


class DeadlineReached(Exception):
    """The call's time is spent: stop between evaluations (the journal keeps what is done)."""


@dataclasses.dataclass
class Deadline:
    seconds: float
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)

    def check(self, reserve: float = 0.0) -> None:
        if self.left() < reserve:
            raise DeadlineReached

    def at(self) -> float:
        """The deadline as time.time() seconds (what a worker process is given)."""
        return time.time() + self.left()


def start_deadline(args) -> Deadline:
    """--deadline-at (a worker: the parent's end, time.time() seconds) or --deadline-s from now."""
    if getattr(args, "deadline_at", None) is not None:
        return Deadline(args.deadline_at - time.time())
    return Deadline(args.deadline_s)


def add_common_options(parser, *, deadline: float = 450.0) -> None:
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=False)
    parser.add_argument("--deadline-s", type=float, default=deadline,
                        help="wall seconds for this call; a search stopped by it resumes with the same command")
    parser.add_argument("--reserve-s", type=float, default=90.0,
                        help="seconds kept back from the search for export and perplexity")
    parser.add_argument("--compile", default="off", help="the evaluator's torch.compile mode (CUDA only)")
    parser.add_argument("--size-workers", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=64 * SEQ_LEN,
                        help="held-out tokens per text for perplexity (WikiText-2, C4, each domain)")
    parser.add_argument("--smoke", action="store_true", help="a tiny CPU run (see the script's SMOKE)")


def add_worker_options(parser) -> None:
    """--jobs: the script's jobs in that many worker processes at once (one GPU shared), each with
    the call's deadline; --threads: torch threads per process. --only and --deadline-at are what a
    parent gives its workers."""
    parser.add_argument("--jobs", type=int, default=1,
                        help="jobs run side by side, each in its own process (1: one after another in this one)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per process (default: the cores / --jobs)")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline-at", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", default=None,
                        help="the bulky files: run directories, artifacts, the size cache, tokenized texts "
                             "(default: --out, which keeps the tables, results, logs and budget)")


def work_dir(args) -> Path:
    """Where run directories, artifacts and caches go: --work-dir, else --out."""
    return Path(getattr(args, "work_dir", None) or args.out)


def tiny_model(directory: Path) -> str:
    """The tests' tiny random Llama (4 layers, hidden 64, byte tokenizer; tests/tiny.py) saved in
    directory: the smoke runs' model, so that a smoke exercises every step in a minute or two."""
    if not (directory / "config.json").exists():
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from tiny import save_tiny_model

        save_tiny_model(directory, "llama")
    return str(directory)


def parse_with_smoke(parser, smoke: list[str], argv: list[str] | None = None):
    """--smoke: the script's SMOKE options (the command line's own come after and win) on the tests'
    tiny model unless --model is given."""
    argv = sys.argv[1:] if argv is None else argv
    if "--smoke" in argv:
        argv = smoke + [a for a in argv if a != "--smoke"]
        if "--model" not in argv:
            outs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--out"]  # the last one wins, as in argparse
            out = Path(outs[-1] if outs else "runs/smoke")
            argv = ["--model", tiny_model(out / "tiny-model")] + argv
    return parser.parse_args(argv)


def share_loaded_models() -> None:
    """Every load_model call of this process with the same arguments returns the same LoadedModel
    (the evaluator restores it after each run): one GGUF conversion per process, not one per run."""
    import evo.modelio as modelio

    if getattr(modelio.load_model, "shared", False):
        return
    original = modelio.load_model
    loaded: dict = {}

    def load(source, **kwargs):
        key = (str(source), repr(sorted(kwargs.items())))
        if key not in loaded:
            loaded[key] = original(source, **kwargs)
        return loaded[key]

    load.shared = True
    modelio.load_model = load


def eval_texts(tokenizer, *, domains: bool) -> dict[str, np.ndarray]:
    """Token streams to measure perplexity on: WikiText-2 test, C4 validation and, with domains,
    each source of the embedded corpus's held-out slice (never drawn into a calibration set)."""
    from evo.data.corpus import read_corpus, read_text
    from evo.evaluate.perplexity import tokenize_for_eval

    texts = {"wikitext2": tokenize_for_eval(tokenizer, read_text("wikitext2")),
             "c4": tokenize_for_eval(tokenizer, read_text("c4"))}
    if domains:
        by_source: dict[str, list[str]] = {}
        for doc in read_corpus([DOMAIN_CORPUS]).documents:
            by_source.setdefault(doc.source, []).append(doc.text)
        for source in sorted(by_source):
            texts[f"domain:{source}"] = tokenize_for_eval(tokenizer, "\n\n".join(by_source[source]))
    return texts


def cached_eval_texts(tokenizer, out: Path, *, domains: bool) -> dict[str, np.ndarray]:
    """eval_texts, tokenized once per output directory (out/eval_texts*.npz): every worker of a
    call reads the parent's."""
    path = Path(out) / ("eval_texts_domains.npz" if domains else "eval_texts.npz")
    if path.exists():
        with np.load(path) as stored:
            return {name: stored[name] for name in stored.files}
    texts = eval_texts(tokenizer, domains=domains)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, **texts)
    os.replace(tmp, path)
    return texts


def prefill_size_table(loaded, space_name: str, out: Path, *, workers: int | None, say) -> int | None:
    """Code every (tensor, setting) pair of the space into out's shared size cache, in `workers`
    processes, before the jobs start: their runs then find every size cached (their level databases
    only quantize). Only for spaces whose codes read no run data (no wanda/mse statistics, no gptq
    Hessians: those sizes depend on each run's calibration set); returns the pairs coded, or None
    when the space's sizes are per run."""
    from evo.compress.plan import needs_hessian_for, needs_stats_for
    from evo.compress.size import SizeCache, SizeModel
    from evo.search.size_table import SizeTable
    from evo.search.space import SearchSpace

    space = SearchSpace.load(space_name)
    if getattr(space, "format", None) == "gguf":
        return None
    table = SizeTable(space, loaded.info, SizeModel.for_model(loaded, SizeCache(Path(out) / SIZE_CACHE_DIR)))
    pairs = table.pairs()
    if any(needs_stats_for(setting) or needs_hessian_for(setting) for _, setting in pairs):
        say(f"space {space.name}: its sizes depend on each run's statistics; every job codes its own")
        return None
    tic = time.perf_counter()
    coded = table.fill(workers=workers)
    say(f"size table of space {space.name}: {len(pairs):,} pairs, {coded:,} coded in {time.perf_counter() - tic:.1f} s")
    return coded


def perplexities(model, texts: dict[str, np.ndarray], max_tokens: int) -> dict[str, float]:
    from evo.evaluate.perplexity import perplexity

    seq_len = min(SEQ_LEN, max_tokens)
    return {name: perplexity(model, ids, seq_len=seq_len, max_tokens=max_tokens).ppl for name, ids in texts.items()
            if ids.size > seq_len}


def export_and_measure(loaded, config, directory: Path, texts, args, *, stats=None, size_cache=None,
                       result_path: Path | None = None) -> dict:
    """Write config's artifact from a copy of the uncompressed model, check its bytes on disk,
    reload it with evo.compress.artifact.load and measure its held-out perplexities. Cached in
    result_path when given (for this config: a resumed search that found another best exports anew)."""
    wanted = json.loads(json.dumps(config.to_dict()))
    if result_path is not None and result_path.exists():
        cached = json.loads(result_path.read_text())
        if cached.get("config") == wanted:
            return {k: v for k, v in cached.items() if k != "config"}
    from evo.compress import artifact
    from evo.compress.model import compress_and_write

    twin = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
    summary = compress_and_write(twin, config, directory, stats=stats, size_cache=size_cache, overwrite=True)
    del twin
    free_gpu()
    on_disk = bytes_on_disk(directory)
    if on_disk != summary.total_bytes:
        raise RuntimeError(f"{directory}: {on_disk} bytes on disk but the artifact summary says {summary.total_bytes}")
    model, _ = artifact.load(directory, device=args.device)
    result = {"bytes": summary.total_bytes, "ppl": perplexities(model, texts, args.max_tokens)}
    del model
    free_gpu()
    if result_path is not None:
        write_json(result_path, {**result, "config": wanted})
    return result


def uniform_budget(loaded, out: Path, bits: int = 3, *, work: Path | None = None) -> int:
    """Exact bytes of the uniform RTN artifact of `bits` (g128 asymmetric, embedding 8-bit): the budget,
    kept in out, its sizes in work's size cache (default: out's)."""
    from evo.baselines import uniform_config
    from evo.compress.size import SizeCache, SizeModel

    path = out / f"budget_uniform{bits}.json"
    if path.exists():
        return int(json.loads(path.read_text())["bytes"])
    cache = SizeCache(Path(work or out) / SIZE_CACHE_DIR)
    size = SizeModel.for_model(loaded, cache).artifact_bytes(uniform_config(bits))
    write_json(path, {"bits": bits, "bytes": int(size)})
    return int(size)


@contextlib.contextmanager
def seeded_run(files: dict[str, Path], size_cache: Path | None = None):
    """While open, a new run directory receives `files` (name → file to copy: a calibration set,
    statistics, a dense reference) and, with size_cache, a link to that shared size cache, right
    after open_session creates it (a run directory must be empty or absent when it is created)."""
    from evo.search import loop

    original = loop._create_checked_run

    def create(spec, space, loaded, run_dir, say):
        lock = original(spec, space, loaded, run_dir, say)
        for name, source in files.items():
            if Path(source).exists() and not (run_dir / name).exists():
                shutil.copy2(source, run_dir / name)
        link = run_dir / SIZE_CACHE_DIR
        if size_cache is not None and not link.exists():
            Path(size_cache).mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(size_cache).resolve(), target_is_directory=True)
        return lock

    loop._create_checked_run = create
    try:
        yield
    finally:
        loop._create_checked_run = original


def open_run(spec, run_dir: Path, args, say, *, calibration=None, share_from=None):
    """Open (create or resume) the search's run directory: its session, ready to search.
    calibration: a CalibrationSet to use instead of the spec's CCDS draw (a new run only);
    share_from: a run directory whose calibration set, statistics and dense reference a new run copies."""
    from evo.constants import CALIBRATION_FILE, REFERENCE_FILE, STATS_FILE
    from evo.search.loop import is_run, open_session

    resume = is_run(run_dir)
    files: dict[str, Path] = {}
    if share_from is not None:
        files = {name: Path(share_from) / name for name in (CALIBRATION_FILE, STATS_FILE, REFERENCE_FILE)}
    if calibration is not None and not resume:
        staged = work_dir(args) / "staged" / f"{run_dir.name}-{CALIBRATION_FILE}"
        staged.parent.mkdir(parents=True, exist_ok=True)
        calibration.save(staged)
        files[CALIBRATION_FILE] = staged
    with seeded_run(files, work_dir(args) / SIZE_CACHE_DIR):
        return open_session(spec, run_dir, resume=resume, device=args.device, status=say, compile=args.compile,
                            extend=resume)


def search_until(spec, run_dir: Path, args, deadline: Deadline, say, *, calibration=None, share_from=None,
                 session=None):
    """Run or resume the search in run_dir (or in `session`, already opened by open_run) until it
    ends or the deadline (less --reserve-s) comes; calibration and share_from as in open_run.
    Returns (session, result or None when stopped by the deadline); session.loop_seconds is the
    time of the search loop alone (the size table, engine and evaluations; not the setup)."""
    from evo.search.loop import run_search

    if session is None:
        session = open_run(spec, run_dir, args, say, calibration=calibration, share_from=share_from)
    state = {"next": 0, "tic": time.perf_counter()}

    def on_progress(p) -> None:
        if p.evaluations_done >= state["next"] or p.evaluations_done == p.evaluations_total:
            state["next"] = p.evaluations_done + max(50, spec.population * 4)
            best = f"best {p.best_quality:.4f} at {p.best_bytes / MB:.3f} MB" if p.best_quality is not None else "none"
            say(f"gen {p.generation}/{p.generations} eval {p.evaluations_done}/{p.evaluations_total} {best}, "
                f"{p.evals_per_second:.2f} new eval/s")
        if deadline.left() < args.reserve_s:
            raise DeadlineReached

    try:
        result = run_search(session, size_workers=args.size_workers, on_progress=on_progress)
    except DeadlineReached:
        session.loop_seconds = time.perf_counter() - state["tic"]
        say(f"deadline: stopped after {len(session.store)} journaled evaluations; the same command resumes")
        session.evaluator.restore()
        return session, None
    session.loop_seconds = result.extra["search_seconds"] = time.perf_counter() - state["tic"]
    session.evaluator.restore()
    return session, result


def best_so_far(session):
    """(CompressionConfig, KL, bytes) of the best full-stage evaluation under the budget in the run's
    journal, or None: what a search the deadline stopped has found (its export stands for the run)."""
    from _searchbench import best_journaled
    from evo.compress.config import CompressionConfig

    found = best_journaled(session)
    if found is None:
        return None
    config, quality, size = found
    return CompressionConfig.from_dict(config), quality, size


def convergence_report(run_dir: Path, out: Path) -> list[str]:
    """`evo report` of a run (its convergence plot among the files); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "evo.cli", "report", str(run_dir), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        return [f"evo report failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"]
    return sorted(str(p) for p in out.rglob("*") if p.is_file())


def mean_std(values) -> str:
    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if values.size == 0:
        return "–"
    if values.size == 1:
        return f"{values[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def write_outputs(out: Path, name: str, data: dict, markdown: str, argv: list[str], *, echo: bool = True) -> None:
    """out/NAME.json and out/NAME.md (each replaced whole: a reader never sees half a table); echo:
    print the table too."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", data)
    md = out / f"{name}.md"
    tmp = md.with_name(f".{md.name}.tmp")
    tmp.write_text(f"# {name}\n\n`python {' '.join(argv)}`\n\n{markdown}\n")
    os.replace(tmp, md)
    if echo:
        print(markdown)
    print(f"{'' if echo else '[' + time.strftime('%H:%M:%S') + '] '}written {out / (name + '.json')} and {md}",
          flush=True)


def run_until_deadline(jobs, deadline: Deadline, reserve_s: float, on_finish=None) -> list[str]:
    """Run (label, job) pairs in order while more than reserve_s is left; the labels of the jobs not
    finished in this call (skipped, stopped by the deadline, or returning None), which a rerun of the
    same command continues. on_finish() is called after each job that returned a result."""
    pending = []
    for label, job in jobs:
        try:
            if deadline.left() < reserve_s or job() is None:
                pending.append(label)
            elif on_finish is not None:
                on_finish()
        except DeadlineReached:
            pending.append(label)
    return pending


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
    waiting, running, not_done = list(labels), {}, []
    while waiting or running:
        while waiting and len(running) < args.jobs:
            label = waiting.pop(0)
            if deadline.left() < args.reserve_s:
                print(f"{label} not started: less than --reserve-s {args.reserve_s:.0f} s left", flush=True)
                not_done.append(label)
                continue
            log = open(logs / f"{label}.log", "a")
            process = subprocess.Popen(base + ["--only", label], stdout=log, stderr=subprocess.STDOUT)
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


def unfinished(out: Path, labels: list[str]) -> list[str]:
    """The job labels without a complete result in out/results (LABEL.json)."""
    done = []
    for label in labels:
        path = Path(out) / "results" / f"{label}.json"
        if path.exists() and json.loads(path.read_text()).get("complete", True):
            done.append(label)
    return [label for label in labels if label not in done]


def write_with_pending(out: Path, name: str, data: dict, markdown: str, argv: list[str], pending: list[str], *,
                       echo: bool = True) -> None:
    """write_outputs with the unfinished jobs recorded in the data and said on the console."""
    data["pending"] = pending
    write_outputs(out, name, data, markdown, argv, echo=echo)
    if pending and echo:
        print(f"not finished in this call: {', '.join(pending)}; run the same command again to continue")


__all__ = [
    "PREPARED_FILE", "UNFINISHED_EXIT", "Deadline", "DeadlineReached", "add_common_options", "add_worker_options",
    "best_so_far", "cached_eval_texts", "convergence_report", "eval_texts", "export_and_measure", "mark_prepared",
    "mean_std", "open_run", "parse_with_smoke", "perplexities", "prefill_size_table", "run_until_deadline",
    "run_workers", "say_as", "search_until", "seeded_run", "share_loaded_models", "start_deadline", "tiny_model",
    "unfinished", "uniform_budget", "wait_until_prepared", "work_dir", "write_outputs", "write_with_pending",
]
