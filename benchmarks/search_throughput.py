"""Search throughput (issue 19): evaluations/s per stage and where the loop's wall time goes —
forward + KL, materialising the genome, sizing it, the engine — for the shipped path and with each
optimisation switched off, side by side in one run; GPU memory; the FLOP limit of one full
evaluation from the model's shapes and the measured time's ratio to it; the size table's coding
time with each worker count.

  # on the GPU (the lead's command):
  python benchmarks/search_throughput.py --device cuda --generations 10 --population 16 \
      --samples 64 --seq-len 512 --stages 2048,16384:16,32768:8 --variants all --out runs/throughput
  # CPU smoke (small):
  python benchmarks/search_throughput.py --device cpu --space bits --generations 1 --population 4 \
      --samples 4 --seq-len 64 --screen-sequences 1 --screen-tokens 32 --table-pairs 64

Variants: shipped (size table, levels resident, whole-batch forward, one sync), no_table (sizes
through SizeModel, encoding on a miss), cache_2gib (the old fixed cache), micro_batch_4 (the old
4-sequence forward), row_sync (the old per-sequence KL with a host sync each), compile (the shipped
path through torch.compile; CUDA only). Each variant has its own run directory and size cache; the
calibration set, activation statistics and dense reference are computed once and shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's evo, not an installed one

from evo.constants import CALIBRATION_FILE, MB, REFERENCE_FILE, STATS_FILE  # noqa: E402
from evo.evaluate.metrics import topk_kl  # noqa: E402
from evo.search.loop import SearchSpec, open_session, run_search  # noqa: E402
from evo.search.schedule import parse_stages  # noqa: E402

VARIANTS = ("shipped", "no_table", "cache_2gib", "micro_batch_4", "row_sync", "compile")
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
        total = 0.0
        for start, batch, logits in evaluator._batches(ids, progress):
            for row in range(batch.shape[0]):
                seq = start + row
                value = topk_kl(logits[row], *(part[seq, :tokens] for part in evaluator._reference_rows))
                total += float(value.double().sum())
        return total / (sequences * tokens)

    return kl


def run_variant(name: str, spec: SearchSpec, args, shared: Path | None) -> dict:
    run_dir = Path(args.out) / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    if name == "compile" and not args.device.startswith("cuda"):
        return {"skipped": "torch.compile runs on CUDA only"}, None
    run_dir.mkdir(parents=True)
    for file in (CALIBRATION_FILE, STATS_FILE, REFERENCE_FILE):  # computed once, by the probe
        shutil.copy2(shared / file, run_dir / file)
    session = open_session(spec, run_dir, resume=False, device=args.device)
    evaluator = session.evaluator
    device = evaluator.device
    timer = Timer(device)
    if name == "no_table":
        session.fill_size_table = lambda **_: None
    if name == "cache_2gib":
        evaluator._cache.limit = 2 << 30
    if name == "micro_batch_4":
        evaluator.fitness = dataclasses.replace(evaluator.fitness, batch_size=4)
    if name == "row_sync":
        evaluator._kl = _row_sync_kl(evaluator)
    if name == "compile":
        evaluator._forward_model = torch.compile(evaluator.model, dynamic=False)
    # the parts: forward + KL (the metric), materialise, size (table fill and every size call), engine = rest
    evaluator._kl = timer.wrap("forward_kl", evaluator._kl)
    evaluator._perplexity = timer.wrap("forward_kl", evaluator._perplexity)
    evaluator.materialise = timer.wrap("materialise", evaluator.materialise)
    session.size_model.artifact_bytes = timer.wrap("size", session.size_model.artifact_bytes)
    inner_size_of = session.size_of
    session.size_of = timer.wrap("size", inner_size_of)
    fill = session.fill_size_table
    session.fill_size_table = timer.wrap("size_table", fill)
    per_stage: dict[int, list[float]] = defaultdict(list)
    evaluate = evaluator.evaluate

    def evaluate_timed(config, stage=2, progress=None):
        tic = time.perf_counter()
        quality = evaluate(config, stage, progress)
        if device.type == "cuda":
            torch.cuda.synchronize()
        per_stage[stage].append(time.perf_counter() - tic)
        return quality

    evaluator.evaluate = evaluate_timed
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tic = time.perf_counter()
    result = run_search(session, size_workers=args.size_workers)
    wall = time.perf_counter() - tic
    loop = wall - timer.seconds["size_table"]
    parts = {k: v for k, v in timer.seconds.items() if k != "size_table"}
    parts["engine"] = max(0.0, loop - sum(parts.values()))
    stats = evaluator.stats
    row = {
        "evaluations": result.new_evaluations,
        "size_table_seconds": timer.seconds["size_table"],
        "loop_seconds": loop,
        "evals_per_second": result.new_evaluations / loop if loop > 0 else None,
        "share": {k: v / loop for k, v in parts.items()} if loop > 0 else {},
        "per_stage": {str(stage): {"evaluations": len(times), "evals_per_second": len(times) / sum(times),
                                   "median_ms": 1000 * sorted(times)[len(times) // 2]}
                      for stage, times in sorted(per_stage.items())},
        "recomputed": stats.recomputed,
        "compressed": stats.compressed,
        "cache_bytes": stats.cache_bytes,
        "micro_batch": evaluator.micro_batch(*evaluator.stage_shape(2)),
        "best": result.best.quality if result.best else None,
    }
    if device.type == "cuda":
        row["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    row["full_stage_shape"] = list(evaluator.stage_shape(2))
    session.evaluator.restore()
    return row, session


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
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
    parser.add_argument("--variants", default="shipped,no_table,cache_2gib,micro_batch_4,row_sync,compile",
                        help=f"comma-separated from {list(VARIANTS)} or 'all'")
    parser.add_argument("--table-workers", default="1,2", help="worker counts to time the size table with")
    parser.add_argument("--table-pairs", type=int, default=0, help="time the table on its first N pairs "
                        "(0: all) and extrapolate to the whole space")
    parser.add_argument("--peak-tflops", type=float, default=H200_BF16_TFLOPS)
    parser.add_argument("--out", default="runs/throughput")
    args = parser.parse_args()
    variants = VARIANTS if args.variants == "all" else tuple(v for v in args.variants.split(",") if v)
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = SearchSpec(budget_bytes=10**12, model=args.model, space=args.space, generations=args.generations,
                      population=args.population, samples=args.samples, seq_len=args.seq_len,
                      clusters=min(8, args.samples), screen_sequences=args.screen_sequences,
                      screen_tokens=args.screen_tokens, stages=parse_stages(args.stages) if args.stages else ())

    # shared files and the budget, from a probe run directory
    probe_dir = out / "probe"
    if probe_dir.exists():
        shutil.rmtree(probe_dir)
    probe = open_session(spec, probe_dir, resume=False, device=args.device,
                         status=lambda m: print(f"[probe] {m}", flush=True))
    report: dict = {"args": vars(args)}

    # the size table's coding time per worker count, on a fresh cache each
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
        tic = time.perf_counter()
        table.code(subset, workers=workers)
        seconds = time.perf_counter() - tic
        table_rows[workers] = {"pairs_timed": len(subset), "pairs_total": len(pairs), "seconds": seconds,
                               "seconds_whole_table": seconds * len(pairs) / len(subset)}
        print(f"size table, {workers} worker(s): {len(subset)} of {len(pairs)} pairs in {seconds:.1f} s "
              f"→ whole table ≈ {table_rows[workers]['seconds_whole_table']:.0f} s", flush=True)
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
    del probe

    rows = {}
    for name in variants:
        print(f"[{name}] searching", flush=True)
        rows[name], session = run_variant(name, spec, args, probe_dir)
        if session is None:
            continue
        del session
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        print(f"[{name}] {json.dumps(rows[name])}", flush=True)
    report["variants"] = rows

    sequences, tokens = rows.get("shipped", {}).get("full_stage_shape", (args.samples, args.seq_len))
    flops = flops_per_evaluation(info, hf_config, sequences, tokens)
    limit_ms = 1000 * flops / (args.peak_tflops * 1e12)
    report["flop_limit"] = {"gflops": flops / 1e9, "peak_tflops": args.peak_tflops, "limit_ms": limit_ms}

    print(f"\nbudget {budget / MB:.3f} MB; full evaluation {sequences} × {tokens} tokens = {flops / 1e9:.1f} GFLOP, "
          f"limit {limit_ms:.2f} ms at {args.peak_tflops:g} TFLOP/s")
    header = f"{'variant':<14}{'evals/s':>9}{'fwd+KL':>8}{'mater.':>8}{'size':>7}{'engine':>8}{'table s':>9}" \
             f"{'full ms':>9}{'× limit':>11}{'recomp':>8}{'GPU GiB':>9}"
    print(header)
    for name, row in rows.items():
        if "skipped" in row:
            print(f"{name:<14}skipped: {row['skipped']}")
            continue
        share = row["share"]
        full = row["per_stage"].get("2", {}).get("median_ms")
        print(f"{name:<14}{row['evals_per_second']:>9.2f}{share.get('forward_kl', 0):>8.1%}"
              f"{share.get('materialise', 0):>8.1%}{share.get('size', 0):>7.1%}{share.get('engine', 0):>8.1%}"
              f"{row['size_table_seconds']:>9.1f}{full or float('nan'):>9.1f}"
              f"{(full or float('nan')) / limit_ms:>11.1f}{row['recomputed']:>8d}"
              f"{row.get('gpu_peak_gib', float('nan')):>9.2f}")
        stages = ", ".join(f"stage {s}: {v['evals_per_second']:.2f}/s ({v['evaluations']})"
                           for s, v in row["per_stage"].items())
        print(f"{'':<14}{stages}")
    (out / "throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten {out / 'throughput.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
