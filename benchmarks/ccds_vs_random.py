"""Does CCDS earn its place (EvoP's claim; issue 19)? The same search with a CCDS calibration set
and with a uniformly random one of the same token count (--samples × --seq-len, from the same
embedded six-domain corpus), for each seed; the held-out perplexity of each exported model on
WikiText-2, C4 and each of the six domains of the embedded corpus's held-out slice (its last 5 % of
documents per file, which no calibration draw reads); mean ± std over seeds, and per run the worst
domain's perplexity relative to the dense model's (robustness across domains).

  # on one H200; each (strategy, seed) is a job whose result is kept, so calls add up:
  python benchmarks/ccds_vs_random.py --device cuda --compile default --size-workers 16 \\
      --seeds 0,1,2 --generations 8 --population 16 --samples 32 --seq-len 512 \\
      --deadline-s 450 --out runs/ccds_vs_random
  # CPU smoke:
  python benchmarks/ccds_vs_random.py --smoke

Every job runs in its own run directory (size cache shared), so a call stopped by --deadline-s
resumes the search it was in; --seeds and --strategies pick the jobs of a call. The markdown table
is written from every finished job on disk, after each call. Budget: uniform 3-bit RTN.
(Coverage of domains by the draws alone, without a search: benchmarks/ccds_coverage.py.)
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

from _experiments import (
    Deadline,
    add_common_options,
    eval_texts,
    export_and_measure,
    mean_std,
    parse_with_smoke,
    perplexities,
    run_until_deadline,
    say_as,
    search_until,
    share_loaded_models,
    uniform_budget,
    write_with_pending,
)
from _searchbench import write_json
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
    from evo.compress.config import CompressionConfig
    from evo.search.loop import SearchSpec, is_run

    out = Path(args.out)
    path = out / "results" / f"{strategy}-s{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    say = say_as(f"{strategy} s{seed}")
    run_dir = out / f"{strategy}-s{seed}"
    spec = SearchSpec(budget_bytes=budget, model=args.model, space=args.space, generations=args.generations,
                      population=args.population, samples=args.samples, seq_len=args.seq_len,
                      clusters=args.clusters, seed=seed, screen_sequences=min(4, args.samples),
                      screen_tokens=min(128, args.seq_len))
    calibration = None if is_run(run_dir) else calibration_set(loaded, args, strategy, seed)
    session, result = search_until(spec, run_dir, args, deadline, say, calibration=calibration)
    if result is None:
        return None
    best = CompressionConfig.from_dict(result.best.config)
    measured = export_and_measure(loaded, best, run_dir / "export", texts, args, stats=session.activation_stats,
                                  size_cache=session.size_model.size_cache, result_path=run_dir / "export.json")
    cal = session.calibration.calibration
    data = {"strategy": strategy, "seed": seed, "kl": result.best.quality, "evaluations": result.evaluations,
            "calibration_sources": {s: cal.sources.count(s) for s in sorted(set(cal.sources))}, **measured}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)
    say(f"{json.dumps(data['ppl'])}")
    return data


def render(out: Path, dense: dict, budget: int, args) -> tuple[dict, str]:
    rows = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
    names = list(dense)
    lines = [f"budget = uniform 3-bit RTN = {budget:,} bytes ({budget / MB:.3f} MB); space {args.space}; "
             f"calibration {args.samples} × {args.seq_len} tokens; {args.generations} generations × {args.population}; "
             f"held-out PPL on ≤ {args.max_tokens:,} tokens per text", "",
             "| calibration | seeds | " + " | ".join(n.replace("domain:", "mix/") for n in names)
             + " | worst domain / dense |", "|---" * (len(names) + 3) + "|",
             "| dense | – | " + " | ".join(f"{dense[n]:.2f}" for n in names) + " | 1 |"]
    summary = {}
    domains = [n for n in names if n.startswith("domain:")]
    for strategy in STRATEGIES:
        runs = [r for r in rows if r["strategy"] == strategy]
        if not runs:
            continue
        worst = [max(r["ppl"][d] / dense[d] for d in domains) for r in runs] if domains else []
        summary[strategy] = {n: [r["ppl"].get(n) for r in runs] for n in names}
        summary[strategy]["worst_domain_ratio"] = worst
        lines.append(f"| {strategy} | {','.join(str(r['seed']) for r in runs)} | "
                     + " | ".join(mean_std([r["ppl"].get(n) for r in runs]) for n in names)
                     + f" | {mean_std(worst)} |")
    return {"dense": dense, "budget_bytes": budget, "runs": rows, "summary": summary}, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser)
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
    deadline = Deadline(args.deadline_s)
    share_loaded_models()
    from evo.modelio import auto_dtype_name, load_model

    loaded = load_model(args.model, dtype=auto_dtype_name(args.device), device=args.device, trust_remote_code=False)
    budget = uniform_budget(loaded, out, 3)
    texts = eval_texts(loaded.tokenizer, domains=True)
    dense_path = out / "dense_ppl.json"
    if not dense_path.exists():
        write_json(dense_path, perplexities(loaded.model, texts, args.max_tokens))
    dense = json.loads(dense_path.read_text())
    jobs = [(s, int(seed)) for seed in args.seeds.split(",") if seed for s in args.strategies.split(",") if s]
    unknown = {s for s, _ in jobs} - set(STRATEGIES)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}: use {list(STRATEGIES)}")
    pending = run_until_deadline(
        [(f"{strategy}-s{seed}", partial(run_job, loaded, args, strategy, seed, budget, texts, deadline))
         for strategy, seed in jobs], deadline, args.reserve_s)
    data, table = render(out, dense, budget, args)
    write_with_pending(out, "ccds_vs_random", data, table, [Path(sys.argv[0]).name, *(argv or sys.argv[1:])], pending)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
