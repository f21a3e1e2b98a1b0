"""Does CCDS earn its place (EvoP's claim; issue 19)? The same search with a CCDS calibration set
and with a uniformly random one of the same token count (--samples × --seq-len, from the same
embedded six-domain corpus), for each seed; the held-out perplexity of each exported model on
WikiText-2, C4 and each of the six domains of the embedded corpus's held-out slice (its last 5 % of
documents per file, which no calibration draw reads); mean ± std over seeds, and per run the worst
domain's perplexity relative to the dense model's (robustness across domains).

  # on one H200 beside evop_vs_shortgpt.py, all six searches at once (the call's command:
  # PHASE=ccds bash benchmarks/issue19_h200.sh; calls add up, a rerun continues what a deadline stopped):
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

import json
from pathlib import Path

import numpy as np

from _experiments import (
    Deadline,
    best_to_export,
    cached_eval_texts,
    deadline_note,
    export_and_measure,
    load_experiment_model,
    mean_std,
    parse_with_smoke,
    perplexities,
    prefill_size_table,
    say_as,
    search_until,
    uniform_budget,
    work_dir,
)
from _searchbench import write_json
from _workers import experiment_parser, finished_result, result_path, run_experiment
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
    from evo.search.loop import SearchSpec, is_run

    label = f"{strategy}-s{seed}"
    done = finished_result(args.out, label)
    if done is not None:
        return done
    say = say_as(f"{strategy} s{seed}")
    run_dir = work_dir(args) / label
    spec = SearchSpec(budget_bytes=budget, model=args.model, space=args.space, generations=args.generations,
                      population=args.population, samples=args.samples, seq_len=args.seq_len,
                      clusters=args.clusters, seed=seed, screen_sequences=min(4, args.samples),
                      screen_tokens=min(128, args.seq_len))
    calibration = None if is_run(run_dir) else calibration_set(loaded, args, strategy, seed)
    session, result = search_until(spec, run_dir, args, deadline, say, calibration=calibration)
    chosen = best_to_export(session, result, say)
    if chosen is None:
        return None
    best, kl, complete = chosen
    measured = export_and_measure(loaded, best, run_dir / "export", texts, args, stats=session.activation_stats,
                                  size_cache=session.size_model.size_cache, result_path=run_dir / "export.json")
    cal = session.calibration.calibration
    data = {"strategy": strategy, "seed": seed, "kl": kl, "evaluations": len(session.store), "complete": complete,
            "search_seconds": session.loop_seconds,
            "calibration_sources": {s: cal.sources.count(s) for s in sorted(set(cal.sources))}, **measured}
    path = result_path(args.out, label)
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
    lines += deadline_note(rows)
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
    paired = paired_by_seed(rows, names)
    if paired:
        lines += ["", "Paired by seed (the same search seed with each calibration): seeds where CCDS's PPL is lower, "
                  "the geometric mean of CCDS / random, and the two-sided p of a paired t-test and a Wilcoxon "
                  "signed-rank test on log(CCDS / random) (scipy).", "",
                  "| text | CCDS lower on | geometric mean CCDS / random | paired t p | Wilcoxon p |", "|---|---|---|---|---|"]
        for name, row in paired.items():
            lines.append(f"| {name.replace('domain:', 'mix/')} | {row['lower']} / {row['pairs']} | {row['ratio']:.4f} "
                         f"| {row['t_p']:.2f} | {row['wilcoxon_p']:.2f} |")
    return ({"dense": dense, "budget_bytes": budget, "runs": rows, "summary": summary, "paired": paired},
            "\n".join(lines))


def paired_by_seed(rows: list[dict], names: list[str]) -> dict:
    """Per text, over the seeds both strategies finished: how often CCDS is lower, the geometric mean
    ratio, and paired tests on the log ratios (needs ≥ 3 pairs; a zero difference everywhere gives p 1)."""
    from scipy import stats

    by = {(r["strategy"], r["seed"]): r for r in rows}
    seeds = sorted(seed for strategy, seed in by if strategy == "ccds" and ("random", seed) in by)
    result = {}
    for name in names:
        logs = [float(np.log(by["ccds", s]["ppl"][name] / by["random", s]["ppl"][name])) for s in seeds
                if by["ccds", s]["ppl"].get(name) and by["random", s]["ppl"].get(name)]
        if len(logs) < 3:
            continue
        same = all(value == 0 for value in logs)
        result[name] = {"pairs": len(logs), "lower": sum(value < 0 for value in logs),
                        "ratio": float(np.exp(np.mean(logs))),
                        "t_p": 1.0 if same else float(stats.ttest_1samp(logs, 0.0).pvalue),
                        "wilcoxon_p": 1.0 if same else float(stats.wilcoxon(logs).pvalue)}
    return result


def prepare(args, out: Path, say) -> dict:
    """What every job shares, computed once in this process: the budget, the size table (when the
    space's sizes read no run data), the tokenized held-out texts and the dense model's PPL
    ({"budget", "dense"})."""
    loaded = load_experiment_model(args)
    work = work_dir(args)
    prefill_size_table(loaded, args.space, work, workers=args.size_workers, say=say)  # the budget's sizes among them
    budget = uniform_budget(loaded, out, 3, work=work)
    texts = cached_eval_texts(loaded.tokenizer, work, domains=True)
    dense_path = out / "dense_ppl.json"
    if not dense_path.exists():
        write_json(dense_path, perplexities(loaded.model, texts, args.max_tokens))
    return {"budget": budget, "dense": json.loads(dense_path.read_text())}


def main(argv: list[str] | None = None) -> int:
    parser = experiment_parser(__doc__)
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
    seeds = [int(seed) for seed in args.seeds.split(",") if seed]
    jobs = {f"{s}-s{seed}": (s, seed) for seed in seeds for s in args.strategies.split(",") if s}
    unknown = {s for s, _ in jobs.values()} - set(STRATEGIES)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}: use {list(STRATEGIES)}")

    def job(label: str, loaded, shared: dict, texts, deadline: Deadline) -> dict | None:
        return run_job(loaded, args, *jobs[label], shared["budget"], texts, deadline)

    return run_experiment(Path(__file__), "ccds_vs_random", args, argv, list(jobs),
                          prepare=prepare, render=render, job=job, domains=True)


if __name__ == "__main__":
    raise SystemExit(main())
