"""Search throughput (issue 19): evaluations/s of the real search loop (run_search: the engine's
asks, repair and sizes, materialise, screens and full evaluations, the journal) and where its wall
time goes — forward + KL, materialising the genome, sizing it, the journal/checkpoints (store), the
engine (the rest) — for the shipped path and with each optimisation switched off, side by side in
one run; GPU peak memory; the FLOP limit of one full evaluation from the model's shapes and the
measured time's ratio to it; the time of one full evaluation per variant; the exact KL against the
top-k + tail estimate the search uses; the level database's and size table's build time.

The probe run builds what every variant shares ONCE: calibration set, activation statistics, dense
reference, size cache, size table and (on CUDA, or with --levels on) the level database. Each variant
then opens its own run directory with copies of those files, takes the probe's table and levels
(its own size model with empty memos over the shared cache: it sizes genomes as a new run does, and
codes nothing), evaluates one genome at every stage shape (compilation, CUDA-graph capture:
`warmup_s`, not part of the loop) and searches until --evaluations new evaluations are done or its
share of the deadline is spent.

  # on one H200 (≈ 7 min; --deadline-s keeps it inside the call; a variant whose compile would not fit
  # is skipped, and throughput.json/.md hold every finished variant from the probe on):
  python benchmarks/search_throughput.py --device cuda --generations 200 --population 16 --samples 64 \
      --seq-len 512 --stages 2048,16384:16,32768:8 --evaluations 300 --min-loop-s 20 --size-workers 16 \
      --deadline-s 400 --out runs/throughput
  # CPU smoke on the tests' tiny random model (about a minute on 2 cores):
  python benchmarks/search_throughput.py --smoke

Variants: shipped (size table, level database, whole-batch forward, one host sync, torch.compile
--compile: "auto", what `evo search` runs = "reduce-overhead" on CUDA since session 26, mask-free
attention), compile_default (compile "default", no CUDA graphs: the shipped path of sessions 23-25),
mask_attention (transformers' attention masks under compile, as before session 26:
evo/evaluate/causal_attention.py), rotary_computed (the rotary cos/sin computed inside the compiled graph, as
before session 27: evo/evaluate/rotary_tables.py), kl_torch_sums (the KL's row sums by torch ops instead of
the one-pass Triton kernel, as before session 27: evo/evaluate/kl_sums.py), kl_four_reductions (the
kernel with LEAN off, four block reductions a chunk, as before session 30: _kl_triton.LEAN), graph_trees (torch.compile's
CUDA graphs of the forward alone, the KL launched after them, as before session 28; shipped replays one graph
of forward + KL per stage: evo/evaluate/stage_graphs.py), tuned_kernels (shipped with Inductor's coordinate
descent tuning of its kernels' block sizes: FastForward's tune_kernels), compile_off (eager forward), levels_off (no level database: levels compressed on first use
into the evaluator's cache), whole_batch_off (4 sequences per forward), kl_chunked (the body once, then
head + KL 4,096 tokens at a time), cuda_graphs (compile "reduce-overhead", levels copied in place;
the same as shipped under "auto" on CUDA),
one_sync_off (the old per-sequence KL with a host sync each), kl_old (the KL reduction before session 24:
a float32 log-softmax copy of the logits, metrics.topk_kl_sum_reference), table_off (sizes through SizeModel), diff_off
(materialise planned over every tensor per evaluation, as before session 23), exceeds_off (every budget
check of the engine's repair sizes the whole artifact by the memoised parts, as before session 23),
sizer_off (sizes and budget checks by the memoised parts and bounds, as before session 24; shipped
sizes from the size table's arrays, evo/search/genome_sizer.py). The
compiled graphs are kept across variants (torch's caches), so only a variant with new shapes or a new
mode compiles again.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import shutil
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's evo, not an installed one

from evo.constants import CALIBRATION_FILE, FINAL_STAGE, MB, REFERENCE_FILE, SIZE_CACHE_DIR, STATS_FILE  # noqa: E402
from evo.evaluate.fastforward import FastForward, resolve_compile_mode  # noqa: E402
from _experiments import parse_with_smoke, seeded_run, share_loaded_models  # noqa: E402
from evo.evaluate.metrics import exact_kl, topk_kl, topk_kl_sum, topk_kl_sum_reference  # noqa: E402
from evo.search.loop import SearchSpec, open_session, run_search  # noqa: E402
from evo.search.schedule import parse_stages  # noqa: E402
from kernel_profile import add_cublas_workspace_option, sync as _sync  # noqa: E402

VARIANTS = ("shipped", "compile_off", "levels_off", "whole_batch_off", "kl_chunked", "cuda_graphs", "one_sync_off",
            "table_off", "diff_off", "exceeds_off", "sizer_off", "kl_old", "compile_default", "mask_attention",
            "rotary_computed", "kl_torch_sums", "graph_trees", "tuned_kernels", "kl_four_reductions")
DEFAULT_VARIANTS = "shipped,compile_default,mask_attention,compile_off,levels_off,whole_batch_off,kl_chunked"
COMPILE_OF = {"cuda_graphs": "reduce-overhead", "compile_default": "default"}  # the others: --compile unless "off"
KL_OF = {"kl_old": topk_kl_sum_reference, "kl_torch_sums": functools.partial(topk_kl_sum, row_sums="torch"),
         "kl_four_reductions": functools.partial(topk_kl_sum, row_sums="full")}
KL_CHUNK = 4096  # tokens per head + KL chunk of the kl_chunked variant
SMOKE = ["--device", "cpu", "--space", "default", "--generations", "50", "--population", "8", "--samples", "4",
         "--seq-len", "64", "--screen-sequences", "1", "--screen-tokens", "32", "--stages", "32,128:4,256:2",
         "--evaluations", "40", "--table-workers", "", "--size-workers", "2", "--levels", "on",
         "--variants", "all", "--deadline-s", "240", "--repeats", "2", "--out", "runs/throughput-smoke"]
H200_BF16_TFLOPS = 989.0  # dense bf16 tensor-core peak of an H100/H200 SXM


def flops_per_evaluation(info, config, sequences: int, tokens: int) -> float:
    """Forward FLOPs of sequences × tokens: 2 per weight and token for every decoder linear and the
    head, plus attention's QKᵀ and AV (2 · 2 · T² · d per layer and sequence, causal halves it)."""
    linear = sum(int(torch.Size(lin.shape).numel()) for layer in info.layers for lin in layer.linears)
    hidden = config.hidden_size
    head = hidden * info.vocab_size
    per_token = 2 * (linear + head)
    attention = len(info.layers) * 2 * 2 * tokens * tokens * hidden / 2
    return sequences * (tokens * per_token + attention)


class Timer:
    """Wall seconds by part; on CUDA each timed call ends with a synchronize so parts are honest."""

    def __init__(self, device: torch.device) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cuda = device.type == "cuda"
        self.depth = 0  # a timed call inside another (size_of → artifact_bytes) counts once

    def wrap(self, part: str, function):
        def timed(*args, **kwargs):
            self.depth += 1
            tic = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.depth -= 1
                if self.depth == 0:
                    if self.cuda:
                        torch.cuda.synchronize()
                    self.seconds[part] += time.perf_counter() - tic

        return timed


def _row_sync_kl(evaluator):
    """The old evaluator's KL: one sequence's KL at a time, a host sync per sequence."""

    def kl(ids, progress):
        sequences, tokens = ids.shape
        size = evaluator.micro_batch(sequences, tokens)
        total = 0.0
        for start in range(0, sequences, size):
            logits = evaluator.forward.logits(evaluator._device_ids[start:start + size, :tokens])
            for row in range(logits.shape[0]):
                seq = start + row
                value = topk_kl(logits[row], *(part[seq, :tokens] for part in evaluator._reference_rows))
                total += float(value.double().sum())
        return total / (sequences * tokens)

    return kl


def full_evaluation_ms(evaluator, config, repeats: int) -> dict:
    """Median wall ms of evaluate(config, FINAL_STAGE) (materialise is a no-op after the first),
    of its forward + KL alone, and of that no-op materialise alone (host time: what evaluate adds)."""
    device = evaluator.device
    evaluator.evaluate(config, FINAL_STAGE)
    whole, forward_kl, materialise = [], [], []
    sequences, tokens = evaluator.stage_shape(FINAL_STAGE)
    for _ in range(repeats):
        _sync(device)
        tic = time.perf_counter()
        evaluator.evaluate(config, FINAL_STAGE)
        _sync(device)
        whole.append(time.perf_counter() - tic)
        tic = time.perf_counter()
        evaluator._kl(evaluator.token_ids[:sequences, :tokens], None)
        _sync(device)
        forward_kl.append(time.perf_counter() - tic)
        tic = time.perf_counter()
        evaluator.materialise(config)
        _sync(device)
        materialise.append(time.perf_counter() - tic)
    return {"evaluate_ms": 1000 * statistics.median(whole), "forward_kl_ms": 1000 * statistics.median(forward_kl),
            "materialise_noop_ms": 1000 * statistics.median(materialise)}


@torch.no_grad()
def exact_kl_of(evaluator, config, forwards: tuple[str, ...] = ("eager",)) -> dict[str, float]:
    """The exact KL(dense ‖ candidate) per token from full logits on the full stage, for each forward
    named: "eager" (the model's own, 4 sequences at a time) and "compiled" (the search's compiled
    forward, the whole stage in one call, the shape the search compiled). The dense logits are computed
    once and stay on the device; the config is left materialised."""
    sequences, tokens = evaluator.stage_shape(FINAL_STAGE)
    ids = evaluator._device_ids[:sequences, :tokens]
    evaluator.restore()
    dense = [evaluator.model(input_ids=ids[s:s + 4], use_cache=False).logits.to(torch.bfloat16)
             for s in range(0, sequences, 4)]
    evaluator.materialise(config)
    exact = {}
    for forward in forwards:
        candidate = evaluator.forward.logits(ids) if forward == "compiled" else None
        total = 0.0
        for index, start in enumerate(range(0, sequences, 4)):
            logits = (candidate[start:start + 4] if candidate is not None else
                      evaluator.model(input_ids=ids[start:start + 4], use_cache=False).logits)
            total += float(exact_kl(dense[index], logits).double().sum())
        exact[forward] = total / (sequences * tokens)
    return exact


@torch.no_grad()
def exact_vs_estimate(evaluator, config) -> dict:
    """The exact KL(dense ‖ candidate) (exact_kl_of) against the top-k + tail estimate on the full
    stage, the estimate both as the search computes it and through the eager forward (same weights,
    same KL reduction): their difference is the compiled forward's rounding; and the exact KL of the
    compiled forward's own logits, against which the search's estimate is the estimator's error alone."""
    sequences, tokens = evaluator.stage_shape(FINAL_STAGE)
    ids = evaluator._device_ids[:sequences, :tokens]
    exact, exact_compiled = exact_kl_of(evaluator, config, ("eager", "compiled")).values()
    estimate = evaluator.evaluate(config, FINAL_STAGE)
    eager = 0.0
    for start in range(0, sequences, 4):
        rows = slice(start, min(start + 4, sequences))
        eager += float(evaluator.forward.kl_sum_of(ids[rows], *(ref[rows, :tokens] for ref in evaluator._reference_rows),
                                                   eager=True))
    eager /= sequences * tokens
    return {"exact": exact, "estimate": estimate, "relative_error": (estimate - exact) / exact if exact else None,
            "estimate_eager": eager, "relative_error_eager": (eager - exact) / exact if exact else None,
            "exact_compiled": exact_compiled,
            "relative_error_compiled": (estimate - exact_compiled) / exact_compiled if exact_compiled else None,
            "top_k": evaluator.reference.top_k, "tail_samples": int(evaluator._reference_rows[3].shape[-1])}


_FORWARDS: dict[tuple, FastForward] = {}  # the variants' forwards over the one shared model


def compiled_graphs(name: str, compile_mode: str) -> tuple:
    """What a variant compiles (mode, KL chunk, KL function): variants with the same key reuse the graphs
    an earlier variant compiled; a new key compiles (and warms up) again."""
    # "auto" as FastForward resolves it on CUDA (a CPU runs every mode eagerly)
    mode = resolve_compile_mode("off" if name == "compile_off" else COMPILE_OF.get(name, compile_mode),
                                torch.device("cuda"))
    return (mode, KL_CHUNK if name == "kl_chunked" else 0, name if name in KL_OF else "", name == "mask_attention",
            name == "rotary_computed", name == "graph_trees", name == "tuned_kernels")


def configure(name: str, evaluator, compile_mode: str) -> None:
    """Switch the variant's optimisation off (or its compile mode / chunked KL on)."""
    mode, chunk, _, masks, rotary_computed, trees, tuned = compiled_graphs(name, compile_mode)
    batch = 4 if name == "whole_batch_off" else None
    evaluator.fitness = dataclasses.replace(evaluator.fitness, compile=mode, kl_chunk=chunk, batch_size=batch)
    key = (id(evaluator.model), mode, chunk, masks, rotary_computed, trees, tuned)
    if key not in _FORWARDS:  # one per key: torch.compile's wrappers and their graphs are reused
        _FORWARDS[key] = FastForward(evaluator.model, mode, evaluator.device, kl_chunk=chunk, mask_free=not masks,
                                     rotary_tables=not rotary_computed, stage_graphs=not trees,
                                     tune_kernels=tuned)
    evaluator.forward = _FORWARDS[key]
    if name in KL_OF:  # the same compiled forward, another KL reduction compiled beside it
        kl_key = (*key, name)
        if kl_key not in _FORWARDS:
            _FORWARDS[kl_key] = _FORWARDS[key].with_kl(KL_OF[name])
        evaluator.forward = _FORWARDS[kl_key]
    if name == "levels_off":
        evaluator.levels = None
    if name == "one_sync_off":
        evaluator._kl = _row_sync_kl(evaluator)
    if name == "diff_off":
        from loop_cpu import full_materialise

        evaluator.materialise = full_materialise(evaluator)


def share_probe(name: str, session, probe) -> None:
    """Give a variant's session the probe's size table and level database (not rebuilt), with its own
    size model (empty memos over the shared size cache): it sizes genomes as a new run would."""
    size_model = probe.size_model.fresh()
    session.size_model = size_model
    if name == "table_off":
        session.fill_size_table = lambda **_: None  # size_of goes through the SizeModel
    elif probe.size_table is not None:
        session.size_table = probe.size_table.sharing(size_model)
    if probe.levels is not None and name != "levels_off":
        session.levels = session.evaluator.levels = probe.levels


class _Enough(Exception):
    """The variant has its evaluations (or its share of the deadline is spent): stop the loop."""


def run_variant(name: str, spec: SearchSpec, args, probe, probe_dir: Path, seconds: float,
                opened: dict | None = None) -> tuple[dict, object]:
    """One variant's search loop and timings; `opened` receives its session (to restore the model
    when the variant fails)."""
    run_dir = Path(args.out) / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cuda = args.device.startswith("cuda")
    if name == "cuda_graphs" and not cuda:
        return {"skipped": "CUDA graphs need CUDA"}, None
    begun = time.perf_counter()
    files = {file: probe_dir / file for file in (CALIBRATION_FILE, STATS_FILE, REFERENCE_FILE)}
    with seeded_run(files, probe_dir / SIZE_CACHE_DIR):
        session = open_session(spec, run_dir, resume=False, device=args.device)
    if opened is not None:
        opened["session"] = session
    evaluator = session.evaluator
    device = evaluator.device
    share_probe(name, session, probe)
    configure(name, evaluator, args.compile)
    # warm-up: one genome at every stage shape (compilation, CUDA-graph capture), not part of the loop
    warm_config = session.config_of([0] * len(session.genes))
    full_only = name in args.full_only.split(",")
    tic = time.perf_counter()
    for stage in [FINAL_STAGE] if full_only else sorted(set(evaluator.stage_shapes) | {1, FINAL_STAGE}):
        evaluator.evaluate(warm_config, stage)
    _sync(device)
    warmup = time.perf_counter() - tic
    evaluator.restore()
    if full_only:  # the forward + KL alone: one compiled shape, no search loop
        row = {"compile": evaluator.fitness.compile, "compiled": evaluator.forward.compiled,
               "fallback": evaluator.forward.fallback, "kl_chunk": evaluator.forward.kl_chunk,
               "levels": evaluator.levels is not None, "warmup_s": warmup, "evaluations": 0,
               "stopped": "full evaluation only", "loop_seconds": 0.0, "evals_per_second": None, "share": {},
               "ms_per_evaluation": {}, "per_stage": {}, "full_stage_shape": list(evaluator.stage_shape(FINAL_STAGE))}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        row["full_evaluation"] = full_evaluation_ms(evaluator, warm_config, args.repeats)
        if device.type == "cuda":
            row["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        evaluator.restore()
        return row, session
    timer = Timer(device)
    # the parts: forward + KL (the metric), materialise, size (every size call), store (journal,
    # checkpoints, front), engine = the rest (asks, repair and level moves but their size calls, tells)
    evaluator._kl = timer.wrap("forward_kl", evaluator._kl)
    evaluator._perplexity = timer.wrap("forward_kl", evaluator._perplexity)
    materialise = evaluator.materialise
    evaluator.materialise = timer.wrap("materialise", materialise)
    session.size_model.artifact_bytes = timer.wrap("size", session.size_model.artifact_bytes)
    session.size_of = timer.wrap("size", session.size_of)
    session.fill_size_table = timer.wrap("size_table", session.fill_size_table)
    if session.size_table is not None:
        if name in ("exceeds_off", "sizer_off"):
            session.size_table.fast_sizes = False
        if name == "exceeds_off":  # every budget check of repair/fill sizes the whole artifact
            table = session.size_table
            table.exceeds = lambda genome, budget: table.artifact_bytes(genome) > budget
        session.size_table.exceeds = timer.wrap("size", session.size_table.exceeds)
    store = session.store
    for method in ("append", "sync", "write_checkpoint", "write_front", "write_text", "write_json"):
        setattr(store, method, timer.wrap("store", getattr(store, method)))
    per_stage: dict[int, list[float]] = defaultdict(list)
    evaluate = evaluator.evaluate

    def evaluate_timed(config, stage=FINAL_STAGE, progress=None):
        tic = time.perf_counter()
        quality = evaluate(config, stage, progress)
        per_stage[stage].append(time.perf_counter() - tic)  # _kl's float() is the host sync
        return quality

    evaluator.evaluate = evaluate_timed
    # a variant whose warm-up (compilation) ate its share still searches --min-loop-s
    stop_at = max(begun + seconds, time.perf_counter() + args.min_loop_s)

    def on_progress(progress) -> None:
        if progress.new_evaluations >= args.evaluations or time.perf_counter() > stop_at:
            raise _Enough

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tic = time.perf_counter()
    result = None
    try:
        result = run_search(session, size_workers=args.size_workers, on_progress=on_progress)
    except _Enough:
        pass
    wall = time.perf_counter() - tic
    loop = wall - timer.seconds["size_table"]
    parts = {k: v for k, v in timer.seconds.items() if k != "size_table"}
    parts["engine"] = max(0.0, loop - sum(parts.values()))
    evaluations = sum(len(times) for times in per_stage.values())
    stats = evaluator.stats
    row = {
        "compile": evaluator.fitness.compile, "attention": evaluator.forward.attention,
        "compiled": evaluator.forward.compiled,
        "fallback": evaluator.forward.fallback,
        "kl_chunk": evaluator.forward.kl_chunk,
        "levels": evaluator.levels is not None,
        "warmup_s": warmup,
        "evaluations": evaluations,
        "stopped": "finished" if result is not None else (
            "evaluations" if evaluations >= args.evaluations else "deadline"),
        "size_table_seconds": timer.seconds["size_table"],
        "loop_seconds": loop,
        "evals_per_second": evaluations / loop if loop > 0 else None,
        "share": {k: v / loop for k, v in parts.items()} if loop > 0 else {},
        "ms_per_evaluation": {k: 1000 * v / max(evaluations, 1) for k, v in parts.items()},
        "per_stage": {str(stage): {"evaluations": len(times), "evals_per_second": len(times) / sum(times),
                                   "median_ms": 1000 * statistics.median(times)}
                      for stage, times in sorted(per_stage.items())},
        "recomputed": stats.recomputed,
        "compressed": stats.compressed,
        "cache_bytes": stats.cache_bytes,
        "micro_batch": evaluator.micro_batch(*evaluator.stage_shape(FINAL_STAGE)),
        "full_stage_shape": list(evaluator.stage_shape(FINAL_STAGE)),
    }
    evaluator.evaluate = evaluate
    evaluator.materialise = materialise
    if device.type == "cuda":
        row["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    row["full_evaluation"] = full_evaluation_ms(evaluator, warm_config, args.repeats)
    if name == "shipped":
        row["kl_check"] = exact_vs_estimate(evaluator, warm_config)
    evaluator.restore()
    return row, session


def render(report: dict, rows: dict, budget: int, limit_ms: float, args) -> str:
    lines = []
    flop = report["flop_limit"]
    lines.append(f"budget {budget / MB:.3f} MB; full evaluation {flop['shape'][0]} × {flop['shape'][1]} tokens = "
                 f"{flop['gflops']:.3g} GFLOP, limit {limit_ms:.3g} ms at {args.peak_tflops:g} TFLOP/s")
    lines.append(f"probe: level database + size table built once in {report['probe_build_seconds']:.1f} s "
                 f"({report.get('levels') or 'no level database'}), shared by every variant")
    for workers, t in report.get("size_table", {}).items():
        lines.append(f"size table, {workers} worker(s): {t['pairs_timed']} of {t['pairs_total']} pairs in "
                     f"{t['seconds']:.1f} s → whole table ≈ {t['seconds_whole_table']:.0f} s")
    lines.append("")
    lines.append("| variant | compile | evals/s (n, stop) | fwd+KL | mater. | size | store | engine | ms/eval fwd+KL "
                 "· mater · size · store · engine | full eval ms | fwd+KL ms | × limit | warm-up s | GPU peak GiB "
                 "| per stage (evals/s, n, median ms) |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        if "skipped" in row:
            lines.append(f"| {name} | skipped: {row['skipped']} |" + " |" * 13)
            continue
        share, ms = row["share"], row["ms_per_evaluation"]
        full = row.get("full_evaluation")
        parts = ("forward_kl", "materialise", "size", "store", "engine")
        stages = "; ".join(f"{s}: {v['evals_per_second']:.1f} ({v['evaluations']}, {v['median_ms']:.1f})"
                           for s, v in row["per_stage"].items())
        compiled = row["compile"] + ("" if row["compiled"] or row["compile"] == "off" else " (eager)")
        full_text = (f"{full['evaluate_ms']:.2f} | {full['forward_kl_ms']:.2f} | {full['forward_kl_ms'] / limit_ms:.1f}"
                     if full else "– | – | –")
        loop = (f"{row['evals_per_second'] or 0:.2f} ({row['evaluations']}, {row['stopped']}) | "
                + " | ".join(f"{share.get(p, 0):.1%}" for p in parts)
                + " | " + " · ".join(f"{ms.get(p, 0):.1f}" for p in parts)) if row["evaluations"] else (
                f"– ({row['stopped']}) |" + " – |" * 6)[:-2]
        lines.append(
            f"| {name} | {compiled} | {loop}"
            + f" | {full_text} | {row['warmup_s']:.1f} | {row.get('gpu_peak_gib', float('nan')):.2f} | {stages} |")
    fallbacks = [f"{name}: {row['fallback']}" for name, row in rows.items() if row.get("fallback")]
    if fallbacks:
        lines.append("")
        lines.extend(f"fallback — {text}" for text in fallbacks)
    for name, row in rows.items():
        full = row.get("full_evaluation")
        if full and "materialise_noop_ms" in full:
            lines.append(f"{name}: the full evaluation's {full['evaluate_ms']:.2f} ms = forward + KL "
                         f"{full['forward_kl_ms']:.2f} ms + the rest; materialise of the resident config alone "
                         f"{full['materialise_noop_ms']:.3f} ms")
    check = rows.get("shipped", {}).get("kl_check")
    if check:
        lines.append("")
        lines.append(f"KL of the warm-up genome on the full stage: exact {check['exact']:.6f} nats/token, "
                     f"top-{check['top_k']} + {check['tail_samples']} tail samples {check['estimate']:.6f} "
                     f"({check['relative_error']:+.3%}); the same through the eager forward {check['estimate_eager']:.6f} "
                     f"({check['relative_error_eager']:+.3%}); exact KL of the compiled forward's own logits "
                     f"{check['exact_compiled']:.6f}, the search's estimate {check['relative_error_compiled']:+.3%} of it")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    add_cublas_workspace_option(parser)
    parser.add_argument("--space", default="default")
    parser.add_argument("--budget-mb", type=float, default=None, help="default: 40 %% of the way from the "
                        "smallest to the largest artifact of the space")
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--screen-sequences", type=int, default=2)
    parser.add_argument("--screen-tokens", type=int, default=64)
    parser.add_argument("--stages", default=None)
    parser.add_argument("--size-workers", type=int, default=None)
    parser.add_argument("--compile", default="auto", help="the shipped path's torch.compile mode (CUDA only; auto: "
                        "what evo search runs, reduce-overhead on CUDA)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated from {list(VARIANTS)} or "
                        "'all'; the first one's figures are the headline")
    parser.add_argument("--evaluations", type=int, default=300, help="new evaluations per variant's search loop "
                        "(screens and full ones together); fewer when its share of the deadline ends first")
    parser.add_argument("--full-only", default="kl_chunked,cuda_graphs", help="variants that only time the full "
                        "evaluation (compiled for its one shape), without a search loop: forward + KL options whose "
                        "compile would not leave the loop any time")
    parser.add_argument("--min-loop-s", type=float, default=10.0, help="seconds of search loop a variant gets "
                        "even when its warm-up (compilation) spent its share of the deadline")
    parser.add_argument("--levels", choices=("auto", "on", "off"), default="auto", help="build the level "
                        "database (auto: on CUDA; on: also on a CPU, as the smoke does)")
    parser.add_argument("--table-workers", default="", help="worker counts to time the size table with "
                        "(besides the probe's fill with --size-workers)")
    parser.add_argument("--table-pairs", type=int, default=0, help="time the table on its first N pairs "
                        "(0: all) and extrapolate to the whole space")
    parser.add_argument("--table-seconds", type=float, default=30.0, help="seconds each --table-workers count "
                        "codes pairs for (then extrapolated to the whole table); at most a quarter of --deadline-s "
                        "goes to the probe and these timings together")
    parser.add_argument("--repeats", type=int, default=5, help="full evaluations timed per variant (median)")
    parser.add_argument("--deadline-s", type=float, default=420.0, help="wall seconds for the whole run: the "
                        "variants share what the probe leaves, each stops its search when its share is spent")
    parser.add_argument("--peak-tflops", type=float, default=H200_BF16_TFLOPS)
    parser.add_argument("--out", default="runs/throughput")
    parser.add_argument("--smoke", action="store_true", help=f"a small CPU run on the tests' tiny model: {' '.join(SMOKE)}")
    args = parse_with_smoke(parser, SMOKE, argv)
    started = time.perf_counter()
    variants = VARIANTS if args.variants == "all" else tuple(v for v in args.variants.split(",") if v)
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    share_loaded_models()
    from evo.modelio import auto_dtype_name, load_model
    from evo.search.budget import early_budget_range
    from evo.search.space import SearchSpace

    loaded = load_model(args.model, dtype=auto_dtype_name(args.device), device=args.device, trust_remote_code=False)
    reach = early_budget_range(SearchSpace.load(args.space), loaded)  # the probe's budget: within reach
    spec = SearchSpec(budget_bytes=(reach.smallest + reach.largest) // 2, model=args.model, space=args.space, generations=args.generations,
                      population=args.population, samples=args.samples, seq_len=args.seq_len,
                      clusters=min(8, args.samples), screen_sequences=args.screen_sequences,
                      screen_tokens=args.screen_tokens, stages=parse_stages(args.stages) if args.stages else ())

    # shared files, the size table and the budget, from a probe run directory
    probe_dir = out / "probe"
    if probe_dir.exists():
        shutil.rmtree(probe_dir)
    probe = open_session(spec, probe_dir, resume=False, device=args.device,
                         status=lambda m: print(f"[probe] {m}", flush=True))
    report: dict = {"args": vars(args)}
    tic = time.perf_counter()
    probe.fill_size_table(workers=args.size_workers, levels={"auto": None, "on": True, "off": False}[args.levels])
    report["probe_build_seconds"] = time.perf_counter() - tic
    if probe.levels is not None and probe.levels.summary is not None:
        summary = probe.levels.summary
        report["levels"] = (f"{summary.levels} levels, tiers {summary.counts}, "
                            f"{sum(summary.bytes.values()) / 2**30:.2f} GiB, built in {summary.seconds:.1f} s")
    print(f"[probe] level database + size table: {report['probe_build_seconds']:.1f} s; "
          f"{report.get('levels') or 'no level database'}", flush=True)

    from evo.compress.size import SizeCache, SizeModel
    from evo.search.size_table import SizeTable

    table_rows = {}
    for workers in (int(w) for w in args.table_workers.split(",") if w):
        cache_dir = out / f"table-w{workers}"
        shutil.rmtree(cache_dir, ignore_errors=True)
        model = SizeModel.for_model(probe.loaded, SizeCache(cache_dir), stats=probe.activation_stats)
        table = SizeTable(probe.space, probe.loaded.info, model)
        pairs = table.pairs()
        subset = pairs[: args.table_pairs] if args.table_pairs else pairs
        # in chunks until --table-seconds are spent (the deadline's, too): the rest is extrapolated
        chunk = max(4 * workers, 64)
        timed = 0
        tic = time.perf_counter()
        while timed < len(subset) and time.perf_counter() - tic < args.table_seconds and \
                time.perf_counter() - started < 0.25 * args.deadline_s:
            table.code(subset[timed:timed + chunk], workers=workers)
            timed += len(subset[timed:timed + chunk])
        seconds = time.perf_counter() - tic
        table_rows[workers] = {"pairs_timed": timed, "pairs_total": len(pairs), "seconds": seconds,
                               "seconds_whole_table": seconds * len(pairs) / max(timed, 1)}
        print(f"[table] {workers} worker(s): {timed} pairs in {seconds:.1f} s", flush=True)
    report["size_table"] = table_rows

    if args.budget_mb is None:
        from evo.search.engines import Problem
        from evo.search.space import extreme_genome

        problem = Problem(genes=probe.genes, size_of=probe.size_of, budget_bytes=spec.budget_bytes)
        low, high = (probe.size_of(extreme_genome(problem, smallest=s)) for s in (True, False))
        budget = int(low + 0.4 * (high - low))
    else:
        budget = int(round(args.budget_mb * MB))
    spec = dataclasses.replace(spec, budget_bytes=budget)
    info, hf_config = probe.loaded.info, probe.loaded.model.config
    probe.evaluator.restore()
    probe.evaluator = None  # its cache; the probe's size model, table and levels are what variants share
    if args.device.startswith("cuda"):
        import torch._dynamo as dynamo

        for name in ("cache_size_limit", "recompile_limit"):  # every variant's stage shapes, graphs kept
            if hasattr(dynamo.config, name):
                setattr(dynamo.config, name, max(getattr(dynamo.config, name), 64))

    sequences, tokens = spec.samples, spec.seq_len  # the full stage: every calibration sequence in full
    flops = flops_per_evaluation(info, hf_config, sequences, tokens)
    limit_ms = 1000 * flops / (args.peak_tflops * 1e12)
    report["flop_limit"] = {"gflops": flops / 1e9, "peak_tflops": args.peak_tflops, "limit_ms": limit_ms,
                            "shape": [sequences, tokens]}
    rows: dict = {}

    def write_results(finished: bool) -> None:
        """throughput.json and .md under --out with every variant finished so far (after the probe and
        after each variant: a call that runs out of time keeps what it measured)."""
        report["variants"] = rows
        report["finished"] = finished
        report["wall_seconds"] = time.perf_counter() - started
        text = render(report, rows, budget, limit_ms, args)
        (out / "throughput.json").write_text(json.dumps(report, indent=2) + "\n")
        state = "" if finished else f"\n\n(partial: {len(rows)} of {len(variants)} variants done)"
        (out / "throughput.md").write_text(f"# search_throughput\n\n`{' '.join(sys.argv)}`\n\n{text}{state}\n")

    write_results(False)
    compiled: set[tuple] = set()  # what the variants so far compiled (their graphs are reused)
    for index, name in enumerate(variants):
        left = args.deadline_s - (time.perf_counter() - started)
        share = left / (len(variants) - index)
        if share < 5:
            rows[name] = {"skipped": f"deadline: {left:.0f} s left"}
            continue
        graphs = compiled_graphs(name, args.compile)
        warmups = [row["warmup_s"] for row in rows.values() if "warmup_s" in row]
        new_compile = args.device.startswith("cuda") and graphs[0] != "off" and graphs not in compiled
        if new_compile and warmups and left < max(warmups) + 10:
            # a new compile would run past the deadline (and the call's timeout): skip it, keep the others
            rows[name] = {"skipped": f"deadline: a new compile (~{max(warmups):.0f} s) does not fit in {left:.0f} s"}
            print(f"[{name}] {rows[name]['skipped']}", flush=True)
            continue
        compiled.add(graphs)
        print(f"[{name}] searching for at most {share:.0f} s", flush=True)
        # the share covers the search; warm-up and the timed full evaluations come on top: leave room
        opened: dict = {}
        try:
            rows[name], session = run_variant(name, spec, args, probe, probe_dir, 0.75 * share, opened)
        except Exception as exc:  # noqa: BLE001 — one variant's failure (a compile mode, memory) is a row
            rows[name], session = {"skipped": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}, None
            print(f"[{name}] {rows[name]['skipped']}", flush=True)
            if "session" in opened:
                opened["session"].evaluator.restore()  # the next variant starts from the dense model
            opened.clear()
        write_results(False)
        if session is None:
            continue
        del session
        gc.collect()  # the session's closures (timers) form cycles: free its weight cache now
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        print(f"[{name}] {json.dumps(rows[name])}", flush=True)
    write_results(True)
    print("\n" + render(report, rows, budget, limit_ms, args))
    print(f"\nwritten {out / 'throughput.json'} and {out / 'throughput.md'} in {report['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
