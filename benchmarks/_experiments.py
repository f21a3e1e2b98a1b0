"""Shared pieces of the GPU experiment scripts (evopress_scale.py, ccds_vs_random.py,
evop_vs_shortgpt.py): a wall-clock deadline that stops a search between evaluations (every
finished evaluation is journaled, so the next call resumes it), held-out perplexity of an exported
artifact on WikiText-2, C4 and each domain of the embedded corpus's held-out slice, the uniform
3-bit RTN budget, one loaded model shared by every run of a process, and JSON + markdown output.

Everything resumes: a search's run directory, an export's result JSON. A call that runs out of
time prints what is left and exits 0; the same command continues.
"""

from __future__ import annotations

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


def add_common_options(parser, *, deadline: float = 450.0) -> None:
    from kernel_profile import add_cublas_workspace_option

    parser.add_argument("--model", default="smollm2-135m")
    add_cublas_workspace_option(parser)
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


def best_to_export(session, result, say):
    """(CompressionConfig, KL, complete) of what a search exports: its result's best (complete), or,
    where the deadline stopped it (result None), its best full-stage evaluation so far (not
    complete); None, said, when there is none yet."""
    from evo.compress.config import CompressionConfig

    if result is not None:
        return CompressionConfig.from_dict(result.best.config), result.best.quality, True
    found = best_so_far(session)
    if found is None:
        say("nothing under the budget was evaluated on the full stage yet: no export")
        return None
    best, kl, _ = found
    return best, kl, False


DEADLINE_NOTE = ("\\* stopped by the deadline before its last generation: its best full-stage evaluation so far "
                 "was exported (the same command continues it).")


def deadline_note(rows: list[dict]) -> list[str]:
    """The table's footnote lines when any run was stopped by the deadline ("complete": false)."""
    return ["", DEADLINE_NOTE] if any(not r.get("complete", True) for r in rows) else []


def load_experiment_model(args):
    """The model of --model on --device in that device's default dtype (no remote code)."""
    from evo.modelio import auto_dtype_name, load_model

    return load_model(args.model, dtype=auto_dtype_name(args.device), device=args.device, trust_remote_code=False)


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


def write_with_pending(out: Path, name: str, data: dict, markdown: str, argv: list[str], pending: list[str], *,
                       echo: bool = True) -> None:
    """write_outputs with the unfinished jobs recorded in the data and said on the console."""
    data["pending"] = pending
    write_outputs(out, name, data, markdown, argv, echo=echo)
    if pending and echo:
        print(f"not finished in this call: {', '.join(pending)}; run the same command again to continue")


__all__ = [
    "DEADLINE_NOTE", "Deadline", "DeadlineReached", "add_common_options", "best_so_far", "best_to_export",
    "cached_eval_texts", "convergence_report", "deadline_note", "eval_texts", "export_and_measure",
    "load_experiment_model", "mean_std", "open_run", "parse_with_smoke", "perplexities",
    "prefill_size_table", "run_until_deadline", "say_as", "search_until", "seeded_run", "share_loaded_models",
    "tiny_model", "uniform_budget", "work_dir", "write_outputs", "write_with_pending",
]
