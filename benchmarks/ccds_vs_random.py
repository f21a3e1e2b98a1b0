"""Does CCDS earn its place (EvoP's claim; issue 19)? The same search with a CCDS calibration set
and with a uniformly random one of the same token count (--samples × --seq-len, from the same
embedded six-domain corpus), for each seed; the held-out perplexity of each exported model on
WikiText-2, C4 and each of the six domains of the embedded corpus's held-out slice (its last 5 % of
documents per file, which no calibration draw reads); mean ± std over seeds, and per run the worst
domain's perplexity relative to the dense model's (robustness across domains).

  # on one H200 beside evop_vs_shortgpt.py, all six searches at once (the call's command:
  # benchmarks/issue19_h200.sh; calls add up, a rerun continues what a deadline stopped):
  python benchmarks/ccds_vs_random.py --device cuda --space bits --seeds 0,1,2 --jobs 6 --threads 2 \\
      --size-workers 8 --generations 16 --population 16 --samples 32 --seq-len 512 --reserve-s 100 \\
      --deadline-s 480 --out $OUT/ccds --work-dir /tmp/issue19/ccds
  # CPU smoke (add --jobs 2 for the worker processes):
  python benchmarks/ccds_vs_random.py --smoke

Each (strategy, seed) is a job with its own run directory (under --work-dir; size cache shared).
--jobs N runs N jobs side by side, each in its own process with this call's deadline, sharing the
GPU; the parent meanwhile does what they share once: the size table (when the space's sizes read no
run data: `bits` does, `default` prunes by wanda on each run's statistics), the budget, the
tokenized held-out texts and the dense PPL. A search stops --reserve-s before the deadline at the
latest and then exports its best full-stage evaluation so far (marked * in the table; a rerun of
the same command continues it). The tables (OUT/ccds_vs_random.md and .json) are rewritten from
every result on disk whenever a job ends. Budget: uniform 3-bit RTN.
(Coverage of domains by the draws alone, without a search: benchmarks/ccds_coverage.py.)
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch

from _experiments import (
    Deadline,
    add_common_options,
    best_so_far,
    cached_eval_texts,
    export_and_measure,
    mean_std,
    parse_with_smoke,
    perplexities,
    prefill_size_table,
    run_until_deadline,
    say_as,
    search_until,
    share_loaded_models,
    uniform_budget,
    work_dir,
    write_with_pending,
)
from _searchbench import free_gpu, write_json
from _workers import (
    UNFINISHED_EXIT,
    add_worker_options,
    mark_prepared,
    run_workers,
    start_deadline,
    unfinished,
    wait_until_prepared,
)
from evo.constants import MB

STRATEGIES = ("ccds", "random")
SMOKE = ["--device", "cpu", "--space", "bits", "--seeds", "0", "--generations", "1", "--population", "4",
         "--samples", "4", "--seq-len", "64", "--clusters", "2", "--max-tokens", "256", "--size-workers", "1",
         "--deadline-s", "420", "--reserve-s", "30", "--out", "runs/ccds_vs_random-smoke"]


def calibration_set(loaded, args, strategy: str, seed: int):
    from evo.data.ccds import CalibrationConfig, build_calibration_set
    from evo.data.corpus import read_corpus
    from evo.search.loop import ccds_candidates

    config = CalibrationConfig(samples=args.samples, clusters=args.clusters, heldout=args.samples,
                               seq_len=args.seq_len, seed=seed, strategy=strategy,
                               max_candidates=ccds_candidates(args.samples))
    return build_calibration_set(loaded, read_corpus(["calibration_mix"]), config)


def run_job(loaded, args, strategy: str, seed: int, budget: int, texts, deadline: Deadline) -> dict | None:
    """One (strategy, seed): draw its calibration set, search until it ends or --reserve-s before the
    deadline, export the best found (a search the deadline stopped: its best so far, "complete":
    false, and a rerun continues it) and measure it. None when nothing is exported."""
    from evo.compress.config import CompressionConfig
    from evo.search.loop import SearchSpec, is_run

    out = Path(args.out)
    path = out / "results" / f"{strategy}-s{seed}.json"
    if path.exists() and json.loads(path.read_text()).get("complete", True):
        return json.loads(path.read_text())
    say = say_as(f"{strategy} s{seed}")
    run_dir = work_dir(args) / f"{strategy}-s{seed}"
    spec = SearchSpec(budget_bytes=budget, model=args.model, space=args.space, generations=args.generations,
                      population=args.population, samples=args.samples, seq_len=args.seq_len,
                      clusters=args.clusters, seed=seed, screen_sequences=min(4, args.samples),
                      screen_tokens=min(128, args.seq_len))
    calibration = None if is_run(run_dir) else calibration_set(loaded, args, strategy, seed)
    session, result = search_until(spec, run_dir, args, deadline, say, calibration=calibration)
    if result is not None:
        best, kl, complete = CompressionConfig.from_dict(result.best.config), result.best.quality, True
    else:
        found = best_so_far(session)
        if found is None:
            say("nothing under the budget was evaluated on the full stage yet: no export")
            return None
        (best, kl, _), complete = found, False
    measured = export_and_measure(loaded, best, run_dir / "export", texts, args, stats=session.activation_stats,
                                  size_cache=session.size_model.size_cache, result_path=run_dir / "export.json")
    cal = session.calibration.calibration
    data = {"strategy": strategy, "seed": seed, "kl": kl, "evaluations": len(session.store), "complete": complete,
            "search_seconds": session.loop_seconds,
            "calibration_sources": {s: cal.sources.count(s) for s in sorted(set(cal.sources))}, **measured}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)
    say(f"{'' if complete else 'stopped by the deadline, best so far: '}{json.dumps(data['ppl'])}")
    return data if complete else None


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.3f}" if a is not None and b else "–"


def render(out: Path, dense: dict, budget: int, args) -> tuple[dict, str]:
    """The summary table (mean ± std over seeds per text; per run the worst domain's PPL over the
    dense model's) and the per-domain table (each strategy's worst seed over dense, and CCDS's mean
    over random's). Runs the deadline stopped are counted and marked."""
    rows = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
    names = list(dense)
    domains = [n for n in names if n.startswith("domain:")]
    lines = [f"budget = uniform 3-bit RTN = {budget:,} bytes ({budget / MB:.3f} MB); space {args.space}; "
             f"calibration {args.samples} × {args.seq_len} tokens; {args.generations} generations × "
             f"{args.population}; held-out PPL on ≤ {args.max_tokens:,} tokens per text", "",
             "| calibration | seeds | evaluations | KL (own calibration) | "
             + " | ".join(n.replace("domain:", "mix/") for n in names) + " | worst domain / dense |",
             "|---" * (len(names) + 5) + "|",
             "| dense | – | – | 0 | " + " | ".join(f"{dense[n]:.2f}" for n in names) + " | 1 |"]
    summary: dict = {}
    for strategy in STRATEGIES:
        runs = [r for r in rows if r["strategy"] == strategy]
        if not runs:
            continue
        worst = [max(r["ppl"][d] / dense[d] for d in domains) for r in runs] if domains else []
        summary[strategy] = {n: [r["ppl"].get(n) for r in runs] for n in names}
        summary[strategy]["worst_domain_ratio"] = worst
        seeds = ",".join(f"{r['seed']}{'' if r.get('complete', True) else '*'}" for r in runs)
        evaluations = ",".join(str(r["evaluations"]) for r in runs)
        lines.append(f"| {strategy} | {seeds} | {evaluations} | {mean_std([r['kl'] for r in runs])} | "
                     + " | ".join(mean_std([r["ppl"].get(n) for r in runs]) for n in names)
                     + f" | {mean_std(worst)} |")
    if any(not r.get("complete", True) for r in rows):
        lines += ["", "\\* stopped by the deadline before its last generation: its best full-stage evaluation so far "
                  "was exported (the same command continues it)."]
    if domains and summary:
        lines += ["", "Per held-out text: each strategy's worst seed's PPL over the dense model's, and CCDS's mean PPL "
                  "over random's (< 1: CCDS better).", "",
                  "| text | dense PPL | ccds worst / dense | random worst / dense | ccds mean / random mean |",
                  "|---|---|---|---|---|"]
        for name in names:
            worst = {s: max((v for v in summary.get(s, {}).get(name, []) if v is not None), default=None)
                     for s in STRATEGIES}
            means = {s: (float(np.mean([v for v in summary[s][name] if v is not None])) if s in summary else None)
                     for s in STRATEGIES}
            lines.append(f"| {name.replace('domain:', 'mix/')} | {dense[name]:.2f} "
                         f"| {ratio(worst['ccds'], dense[name])} | {ratio(worst['random'], dense[name])} "
                         f"| {ratio(means['ccds'], means['random'])} |")
    return {"dense": dense, "budget_bytes": budget, "runs": rows, "summary": summary}, "\n".join(lines)


def prepare(args, out: Path, say) -> tuple[int, dict]:
    """What every job shares, computed once in this process: the budget, the size table (when the
    space's sizes read no run data), the tokenized held-out texts and the dense model's PPL."""
    from evo.modelio import auto_dtype_name, load_model

    loaded = load_model(args.model, dtype=auto_dtype_name(args.device), device=args.device, trust_remote_code=False)
    work = work_dir(args)
    prefill_size_table(loaded, args.space, work, workers=args.size_workers, say=say)  # the budget's sizes among them
    budget = uniform_budget(loaded, out, 3, work=work)
    texts = cached_eval_texts(loaded.tokenizer, work, domains=True)
    dense_path = out / "dense_ppl.json"
    if not dense_path.exists():
        write_json(dense_path, perplexities(loaded.model, texts, args.max_tokens))
    return budget, json.loads(dense_path.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser)
    add_worker_options(parser)
    parser.add_argument("--space", default="default")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (calibration draw and search)")
    parser.add_argument("--strategies", default="ccds,random")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=6, help="CCDS k-means clusters (six domains)")
    args = parse_with_smoke(parser, SMOKE, argv)
    args.out = args.out or "runs/ccds_vs_random"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work_dir(args).mkdir(parents=True, exist_ok=True)
    deadline = start_deadline(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    jobs = [(s, int(seed)) for seed in args.seeds.split(",") if seed for s in args.strategies.split(",") if s]
    unknown = {s for s, _ in jobs} - set(STRATEGIES)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}: use {list(STRATEGIES)}")
    labels = [f"{strategy}-s{seed}" for strategy, seed in jobs]
    command = [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
    say = say_as("ccds_vs_random")

    shared: dict = {}

    def write_table(final: bool) -> None:
        data, table = render(out, shared["dense"], shared["budget"], args)
        write_with_pending(out, "ccds_vs_random", data, table, command, unfinished(out, labels), echo=final)

    def prepare_shared() -> None:
        shared["budget"], shared["dense"] = prepare(args, out, say)
        free_gpu()
        mark_prepared(out, {"budget_bytes": shared["budget"]})

    if args.only is None and args.jobs > 1:  # the parent: each job in a worker process, the shared work here
        run_workers(Path(__file__), list(argv if argv is not None else sys.argv[1:]), labels, args, deadline,
                    on_finish=lambda: write_table(False), prepare=prepare_shared)
        write_table(True)
        return 0
    share_loaded_models()
    from evo.modelio import auto_dtype_name, load_model

    loaded = load_model(args.model, dtype=auto_dtype_name(args.device), device=args.device, trust_remote_code=False)
    if args.only is not None and not wait_until_prepared(out, deadline, say):
        return UNFINISHED_EXIT
    shared["budget"], shared["dense"] = prepare(args, out, say)  # a worker reads what its parent wrote
    texts = cached_eval_texts(loaded.tokenizer, work_dir(args), domains=True)
    chosen = [(s, seed) for s, seed in jobs if args.only is None or f"{s}-s{seed}" in args.only.split(",")]
    pending = run_until_deadline(
        [(f"{strategy}-s{seed}", partial(run_job, loaded, args, strategy, seed, shared["budget"], texts, deadline))
         for strategy, seed in chosen], deadline, args.reserve_s,
        on_finish=None if args.only else lambda: write_table(False))
    if args.only is not None:  # a worker: the parent writes the table
        return UNFINISHED_EXIT if pending else 0
    write_table(True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
