"""Shared pieces of the search benchmarks (search_quality.py, compare_engines.py): run a search in
its own run directory with a size cache shared by every run, write a config's artifact from a copy
of the model and measure its WikiText-2 perplexity, and run named jobs in parallel processes that
each leave their result as JSON (so a second call resumes where the first stopped)."""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from _common import bytes_on_disk
from evo.compress import artifact
from evo.baselines import uniform_config
from evo.compress.config import CompressionConfig
from evo.data.corpus import read_text
from evo.evaluate.resident import worker_environment
from evo.evaluate.perplexity import perplexity, tokenize_for_eval
from evo.compress.model import compress_and_write
from evo.modelio import load_model
from evo.search.loop import SearchSpec, is_run, open_session, run_search
from evo.compress.size import SizeCache, SizeModel
from evo.constants import CALIBRATION_FILE, REFERENCE_FILE, SIZE_CACHE_DIR, STATS_FILE
from evo.types import ATTENTION_ROLES

from evo.constants import MB  # noqa: E402
SEQ_LEN = 512  # WikiText-2 windows, the usual protocol
UNIFORM_LOW, UNIFORM_HIGH = 3, 4  # the budget's width and the one shown for scale


def say_as(tag: str):
    def say(message: str) -> None:
        print(f"[{tag} {time.strftime('%H:%M:%S')}] {message}", flush=True)

    return say


def free_gpu() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def wikitext_ids(tokenizer) -> np.ndarray:
    return tokenize_for_eval(tokenizer, read_text("wikitext2"))


def c4_ids(tokenizer) -> np.ndarray:
    return tokenize_for_eval(tokenizer, read_text("c4"))


def artifact_ppl(directory: Path, ids: np.ndarray, args, more: dict[str, np.ndarray] | None = None):
    """WikiText-2 PPL of the artifact (a float); with `more` ({name: ids}), a dict with "ppl" and
    "ppl_NAME" for each of them, from the one load."""
    model, _ = artifact.load(directory, device=args.device)
    ppl = perplexity(model, ids, seq_len=SEQ_LEN, max_tokens=args.max_tokens).ppl
    extra = {f"ppl_{name}": perplexity(model, other, seq_len=SEQ_LEN, max_tokens=args.max_tokens).ppl
             for name, other in (more or {}).items()}
    del model
    free_gpu()
    return {"ppl": ppl, **extra} if more is not None else ppl


def write_and_measure(loaded, config: CompressionConfig, directory: Path, ids: np.ndarray, args, *, stats=None,
                       size_cache=None, hessians=None, more: dict[str, np.ndarray] | None = None) -> dict:
    """Write `config`'s artifact from a copy of the (uncompressed) model, reload it, measure its PPL
    (`hessians`: the run's, for gptq levels; `more`: other texts' ids, measured as ppl_NAME)."""
    twin = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
    summary = compress_and_write(twin, config, directory, stats=stats, hessians=hessians, size_cache=size_cache,
                                 overwrite=True)
    del twin
    free_gpu()
    on_disk = bytes_on_disk(directory)
    if on_disk != summary.total_bytes:
        raise RuntimeError(f"{directory}: {on_disk} bytes on disk but the artifact summary says {summary.total_bytes}")
    if more is not None:
        return {"bytes": summary.total_bytes, **artifact_ppl(directory, ids, args, more)}
    return {"bytes": summary.total_bytes, "ppl": artifact_ppl(directory, ids, args)}


def describe_choice(config: CompressionConfig, info) -> dict:
    """What a config spends its bytes on: embedding bits, per-layer bits of attention and MLP (a
    digit per layer, '-' where the block is dropped), sparsity and rescale of the quantized units,
    drops, and the parameter-weighted mean bit-width of the decoder linears that are kept."""
    attention, mlp, sparsity, rescale = [], [], [], []
    weighted = numel = 0
    per_role: dict[str, dict[str, int]] = {}  # role -> {bits: parameters at that width}, dropped ones as "-"
    quantizers: dict[str, int] = {}
    for layer in info.layers:
        entry, drop = config.layer(layer.index), config.drop_for(layer.index)
        for block, gone, out in (("attention", drop in ("attention", "layer"), attention),
                                 ("mlp", drop in ("mlp", "layer"), mlp)):
            setting = getattr(entry, block) or config.default
            out.append("-" if gone else ("F" if setting.bits == 16 else str(setting.bits)))
            if gone:
                continue
            if setting.quantized:
                sparsity.append(setting.sparsity)
                rescale.append(setting.rescale)
            for lin in layer.linears:
                if (lin.role in ATTENTION_ROLES) == (block == "attention"):
                    weighted += setting.bits * lin.numel
                    numel += lin.numel
                    role = per_role.setdefault(lin.role, {})
                    role[str(setting.bits)] = role.get(str(setting.bits), 0) + 1
                    if setting.quantized:
                        quantizers[setting.quantizer] = quantizers.get(setting.quantizer, 0) + 1
    return {
        "embedding_bits": config.embedding.bits,
        "embedding_quantizer": config.embedding.quantizer if config.embedding.quantized else "-",
        "bits_per_role": {role: dict(sorted(counts.items(), key=lambda kv: int(kv[0])))
                          for role, counts in per_role.items()},
        "linear_quantizers": quantizers,
        "attention_bits": "".join(attention),
        "mlp_bits": "".join(mlp),
        "drops": {str(k): v for k, v in config.drops.items()},
        "mean_linear_bits": weighted / numel if numel else 0.0,
        "sparse_units": sum(1 for s in sparsity if s > 0),
        "sparsity_values": sorted({s for s in sparsity if s > 0}),
        "rescaled_units": {repr(r): sum(1 for x in rescale if x == r) for r in sorted(set(rescale)) if r != 1.0},
        "quantized_units": len(sparsity),
    }


def progress_printer(say, every: int):
    state = {"next": 0}

    def on_progress(p) -> None:
        if p.evaluations_done >= state["next"] or p.evaluations_done == p.evaluations_total:
            state["next"] = p.evaluations_done + every
            best = f"best {p.best_quality:.4f} at {p.best_bytes / MB:.3f} MB" if p.best_quality is not None else "none yet"
            say(f"gen {p.generation}/{p.generations} eval {p.evaluations_done}/{p.evaluations_total} {best}, "
                f"{p.evals_per_second:.2f} new eval/s")

    return on_progress


def prepare_run_dir(run_dir: Path, shared_cache: Path, share_from: Path | None = None, spec=None) -> bool:
    """Make a run directory whose size cache is the benchmark's shared one; a new run may start from
    another run's calibration set, statistics and dense reference. Returns whether it resumes. A new
    run (with `spec`) is created as evo creates one (atomically, spec.json first), then opened as a
    resume: evo refuses to start a run in a directory that already holds files."""
    resume = is_run(run_dir)
    if not resume and spec is not None:
        from evo.search.lifecycle import create_run_directory
        from evo.search.space import SearchSpace

        create_run_directory(run_dir, {"search": spec.to_dict(),
                                       "space": SearchSpace.load(spec.space).to_dict()}).release()
    run_dir.mkdir(parents=True, exist_ok=True)
    link = run_dir / SIZE_CACHE_DIR
    shared_cache.mkdir(parents=True, exist_ok=True)  # a run may start before any baseline made it
    if not link.exists() and not link.is_symlink():
        link.symlink_to(shared_cache.resolve(), target_is_directory=True)
    if share_from is not None and not resume:
        for name in (CALIBRATION_FILE, STATS_FILE, REFERENCE_FILE):
            if (share_from / name).exists() and not (run_dir / name).exists():
                shutil.copy2(share_from / name, run_dir / name)
    return resume


class DeadlineReached(Exception):
    """The call's --deadline-s is near: the search stops between evaluations (the journal keeps them)."""


class Unfinished(Exception):
    """A job the deadline stopped before it had a result: nothing is written, the same command resumes it."""


UNFINISHED_EXIT = 3  # a --jobs worker's exit status for Unfinished


def stop_at(progress, deadline_at: float | None):
    """`progress` that raises DeadlineReached once time.time() passes deadline_at (None: never)."""
    if deadline_at is None:
        return progress

    def on_progress(p) -> None:
        progress(p)
        if time.time() >= deadline_at:
            raise DeadlineReached

    return on_progress


def best_journaled(session):
    """(config dict, quality, bytes) of the best final-stage evaluation under the budget in the run's
    journal, or None: what a search stopped mid-generation has found."""
    from evo.constants import FINAL_STAGE

    fits = [e for e in session.store.entries()
            if e.stage == FINAL_STAGE and e.size_bytes <= session.spec.budget_bytes]
    if not fits:
        return None
    best = min(fits, key=lambda e: (e.quality, e.size_bytes))
    return session.config_of(tuple(best.genome)).to_dict(), best.quality, best.size_bytes


def search(spec: SearchSpec, run_dir: Path, args, say, share_from: Path | None = None, deadline_at: float | None = None):
    """Run or resume a search; with deadline_at (time.time() seconds) it stops between evaluations
    when that time passes and the result is None (see best_journaled)."""
    prepare_run_dir(run_dir, Path(args.out) / SIZE_CACHE_DIR, share_from, spec=spec)
    tic = time.perf_counter()
    session = open_session(spec, run_dir, resume=True, device=args.device, status=say)
    searching = time.perf_counter()
    try:
        result = run_search(session, on_progress=stop_at(progress_printer(say, every=max(1, spec.population * 2)),
                                                         deadline_at))
    except DeadlineReached:
        seconds = time.perf_counter() - tic
        say(f"deadline: {spec.engine} search stopped after {len(session.store)} journaled evaluations "
            f"in {seconds:.0f} s (the same command resumes it)")
        session.evaluator.restore()
        return session, None, seconds
    seconds = time.perf_counter() - tic
    result.extra["search_seconds"] = time.perf_counter() - searching
    say(f"{spec.engine} search: {result.evaluations} evaluations ({result.new_evaluations} new) in {seconds:.0f} s; "
        f"best {result.best.quality:.4f} at {result.best.size_bytes:,} bytes")
    session.evaluator.restore()
    return session, result, seconds


def journal(run_dir: Path) -> list[dict]:
    path = run_dir / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def job_baselines(args) -> dict:
    say = say_as("baselines")
    out = Path(args.out)
    loaded = load_model(args.model, device=args.device)
    ids = wikitext_ids(loaded.tokenizer)
    cache = SizeCache(out / SIZE_CACHE_DIR)
    result = {"model": loaded.info.model_id, "wikitext_tokens": int(min(ids.size, args.max_tokens))}
    more = {"c4": c4_ids(loaded.tokenizer)} if getattr(args, "c4", False) else None
    dense_ppl = perplexity(loaded.model, ids, seq_len=SEQ_LEN, max_tokens=args.max_tokens).ppl
    dense_bytes = SizeModel.for_model(loaded, cache).artifact_bytes(uniform_config(16, embedding_bits=16))
    result["dense"] = {"bytes": dense_bytes, "ppl": dense_ppl}
    for name, other in (more or {}).items():
        result["dense"][f"ppl_{name}"] = perplexity(loaded.model, other, seq_len=SEQ_LEN, max_tokens=args.max_tokens).ppl
    say(f"dense: {dense_bytes:,} bytes as a bf16 artifact, WikiText-2 PPL {dense_ppl:.3f}")
    for bits in (UNIFORM_LOW, UNIFORM_HIGH):
        measured = write_and_measure(loaded, uniform_config(bits), out / "artifacts" / f"uniform{bits}", ids, args,
                                      size_cache=cache, more=more)
        result[f"uniform{bits}"] = measured
        say(f"uniform {bits}-bit: {measured['bytes']:,} bytes, WikiText-2 PPL {measured['ppl']:.3f}")
    return result


def read_baselines(args) -> dict:
    return json.loads((Path(args.out) / "results" / "baselines.json").read_text())


def run_job(args, name: str, job: Callable[[], dict]) -> dict:
    """Run one job unless its result is already on disk; return the result."""
    path = Path(args.out) / "results" / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    tic = time.perf_counter()
    result = job()
    result["wall_seconds"] = time.perf_counter() - tic
    result["device"] = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    return result


def common_argv(script: str, args) -> list[str]:
    """The command line a job process is started with: the script and the options every job shares."""
    return [script, "--device", args.device, "--model", args.model, "--out", args.out, "--generations",
            str(args.generations), "--population", str(args.population), "--max-tokens", str(args.max_tokens),
            "--seeds", str(args.seeds)]


DEADLINE_GRACE_S = 30.0  # a job still running this long after the deadline is stopped


def run_parallel(args, names: list[str], script_argv: list[str], deadline_at: float | None = None) -> dict[str, str]:
    """Each job in its own process (the script's own command line + `--only NAME`), at most --jobs at
    a time, the CPU threads split between them (or --threads each, when given: two such parents side by
    side on one machine); logs under out/logs. With deadline_at (time.time()
    seconds) no job starts after it and a job still running DEADLINE_GRACE_S later is terminated
    (its result is missing; the caller shows what finished). Returns the jobs that failed, each with
    the last line of its log (the caller decides whether that ends the call)."""
    logs = Path(args.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pending, running = list(names), {}
    side_by_side = max(1, min(args.jobs, len(names)))
    threads = getattr(args, "threads", None) or max(1, (os.cpu_count() or 2) // side_by_side)
    base = [sys.executable, *script_argv, "--threads", str(threads)]
    environment = worker_environment(side_by_side)  # each job's share of the GPU's memory
    failed: dict[str, str] = {}
    while pending or running:
        if deadline_at is not None and time.time() > deadline_at:
            for name in pending:
                print(f"{name} not started: the deadline has passed", flush=True)
            pending = []
        if deadline_at is not None and time.time() > deadline_at + DEADLINE_GRACE_S:
            for name, (proc, log, tic) in list(running.items()):
                proc.terminate()
                proc.wait()
                log.close()
                del running[name]
                print(f"{name} stopped at the deadline after {time.perf_counter() - tic:.0f} s", flush=True)
            break
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            log = open(logs / f"{name}.log", "a")
            running[name] = (subprocess.Popen(base + ["--only", name], stdout=log, stderr=subprocess.STDOUT,
                                              env=environment), log, time.perf_counter())
            print(f"started {name} (log {logs / (name + '.log')})", flush=True)
        time.sleep(2)
        for name, (proc, log, tic) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            print(f"{name} finished with exit code {proc.returncode} in {time.perf_counter() - tic:.0f} s", flush=True)
            if proc.returncode == UNFINISHED_EXIT:
                print(f"{name} unfinished at the deadline (the same command resumes it)", flush=True)
            elif proc.returncode != 0:
                tail = (logs / f"{name}.log").read_text().splitlines()[-30:]
                print("\n".join(tail), flush=True)
                last = next((line.strip() for line in reversed(tail) if line.strip()), "")
                failed[name] = f"exit code {proc.returncode}" + (f": {last}" if last else "")
    return failed


def mean_std(values) -> str:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 1:
        return f"{values[0]:.4g}"
    return f"{values.mean():.4g} ± {values.std(ddof=1):.2g}"


