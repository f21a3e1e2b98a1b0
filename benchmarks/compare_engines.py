"""Engines side by side on the default model: DEAP vs Optuna-TPE vs Optuna-NSGA-II vs random search,
the same number of evaluations and the same budget (the uniform 3-bit artifact's bytes), ≥ 3 seeds.

    python benchmarks/compare_engines.py --device cuda --seeds 3 --generations 6 --population 12 \
        --out runs/compare_engines --jobs 8

Every (seed, engine) is one job in its own run directory under --out (a second call resumes; with
--jobs N they run in N processes sharing the GPU and one size cache). DEAP makes
`evaluations_planned` evaluations (its initial population, then per generation 2P screened
offspring and P/2 survivors re-scored); every other engine is given exactly that many, asked in
batches of P (or the nearest divisor of the count), all of them full evaluations. A seed fixes the
CCDS calibration draw (the same for every engine of that seed) and the engine's randomness.

For the best configuration under budget of each run: calibration KL (the run's record), WikiText-2
perplexity of its artifact written and reloaded, and its bytes. Per engine: wall seconds per
evaluation, and the engine's own overhead per evaluation = (time inside the search loop − time
spent evaluating) / evaluations. It covers ask/tell, the journal, the checkpoints and, above all,
the exact size of every genome a repair step tries (new (tensor, setting) pairs are coded on the
CPU inside ask()). `--engine-overhead` measures the engines alone on a synthetic problem shaped like
the default space on SmolLM2-135M (211 genes, sizes and qualities from formulas, no model).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from _searchbench import (
    common_argv,
    MB,
    SEQ_LEN,
    UNIFORM_LOW,
    describe_choice,
    free_gpu,
    job_baselines,
    journal,
    mean_std,
    read_baselines,
    run_job,
    run_parallel,
    say_as,
    search,
    wikitext_ids,
    write_and_measure,
    write_json,
)
from evo.compress.config import CompressionConfig
from evo.search.loop import SearchSpec, evaluations_planned

# name -> (engine, sampler): what `evo search --engine E --sampler S` runs
ENGINES = {
    "deap": ("deap", None),
    "optuna-tpe": ("optuna", "tpe"),
    "optuna-nsga2": ("optuna", "nsga2"),
    "random": ("random", None),
}


def batch_size(evaluations: int, population: int) -> int:
    """The batch nearest the population that divides the evaluation count exactly."""
    divisors = [d for d in range(1, evaluations + 1) if evaluations % d == 0]
    return min(divisors, key=lambda d: (abs(d - population), -d))


def engine_spec(args, seed: int, name: str, budget: int) -> SearchSpec:
    engine, sampler = ENGINES[name]
    deap = SearchSpec(budget_bytes=budget, model=args.model, space="default", engine="deap",
                      generations=args.generations, population=args.population, seed=seed)
    if engine == "deap":
        return deap
    evaluations = evaluations_planned(deap)
    batch = batch_size(evaluations, args.population)
    extra = {"sampler": sampler} if sampler else {}
    spec = dataclasses.replace(deap, engine=engine, population=batch, generations=evaluations // batch - 1, **extra)
    assert evaluations_planned(spec) == evaluations, (spec, evaluations)
    return spec


def job_run(args, seed: int, name: str) -> dict:
    say = say_as(f"seed{seed} {name}")
    baselines = read_baselines(args)
    budget = baselines[f"uniform{UNIFORM_LOW}"]["bytes"]
    spec = engine_spec(args, seed, name, budget)
    run_dir = Path(args.out) / f"seed{seed}" / name
    session, found, seconds = search(spec, run_dir, args, say)
    entries = journal(run_dir)
    evaluating = sum(e["seconds"] for e in entries)
    best = CompressionConfig.from_dict(found.best.config)
    ids = wikitext_ids(session.loaded.tokenizer)
    measured = write_and_measure(session.loaded, best, run_dir / "export", ids, args,
                                 stats=session.activation_stats, size_cache=session.size_model.size_cache)
    result = {
        **measured, "seed": seed, "engine": name, "budget_bytes": budget, "kl": found.best.quality,
        "recorded_bytes": found.best.size_bytes, "evaluations": len(entries),
        "full_evaluations": sum(1 for e in entries if e["stage"] == 2),
        "new_evaluations": found.new_evaluations, "seconds": seconds,
        "search_seconds": found.extra["search_seconds"], "evaluation_seconds": evaluating,
        "config": found.best.config, "choice": describe_choice(best, session.loaded.info),
        "population": spec.population, "generations": spec.generations,
    }
    if found.new_evaluations == len(entries):  # overhead only means something for a run made in one go
        result["overhead_per_evaluation"] = (found.extra["search_seconds"] - evaluating) / len(entries)
    say(f"best KL {result['kl']:.4f}, {measured['bytes']:,} bytes, PPL {measured['ppl']:.3f}")
    del session
    free_gpu()
    return result


def job(args, job_name: str) -> dict:
    seed, name = job_name.split("-", 1)
    return job_run(args, int(seed[len("seed"):]), name)


def script_argv(args) -> list[str]:
    return common_argv(__file__, args) + ["--engines", ",".join(args.engines)]


def render(baselines: dict, runs: dict[str, list[dict]]) -> str:
    budget = baselines[f"uniform{UNIFORM_LOW}"]["bytes"]
    first = next(iter(runs.values()))
    lines = [f"SmolLM2-135M ({baselines['model']}), budget = uniform {UNIFORM_LOW}-bit artifact = {budget:,} bytes; "
             f"{first[0]['evaluations']} evaluations per run; WikiText-2 test PPL over {baselines['wikitext_tokens']:,} "
             f"tokens ({SEQ_LEN}-token windows); calibration KL at the final stage; {len(first)} seed(s), mean ± std"]
    header = (f"{'engine':<14} {'MB':>16} {'WikiText-2 PPL':>16} {'calib KL':>16} {'full evals':>11} "
              f"{'s / eval':>9} {'overhead ms / eval':>19}")
    lines += [header, "-" * len(header)]
    lines.append(f"{'uniform 3-bit':<14} {budget / MB:>16.3f} {baselines[f'uniform{UNIFORM_LOW}']['ppl']:>16.4g}")
    for name, results in runs.items():
        overhead = [r["overhead_per_evaluation"] * 1000 for r in results if "overhead_per_evaluation" in r]
        lines.append(
            f"{name:<14} {mean_std([r['bytes'] / MB for r in results]):>16} {mean_std([r['ppl'] for r in results]):>16} "
            f"{mean_std([r['kl'] for r in results]):>16} {int(np.mean([r['full_evaluations'] for r in results])):>11} "
            f"{np.mean([r['search_seconds'] / r['evaluations'] for r in results]):>9.2f} "
            f"{(mean_std(overhead) if overhead else '-'):>19}")
    lines.append("")
    lines.append("per seed: PPL / KL / MB")
    for name, results in runs.items():
        lines.append(f"  {name:<14} " + "   ".join(f"s{r['seed']}: {r['ppl']:.2f} / {r['kl']:.4f} / {r['bytes'] / MB:.3f}"
                                               for r in results))
    if "deap" in runs:
        lines.append("")
        lines.append("ratios to DEAP (per seed, then mean ± std)   PPL            KL")
        deap = {r["seed"]: r for r in runs["deap"]}
        for name, results in runs.items():
            if name == "deap":
                continue
            ppl = [r["ppl"] / deap[r["seed"]]["ppl"] for r in results]
            kl = [r["kl"] / deap[r["seed"]]["kl"] for r in results]
            lines.append(f"  {name:<14} / deap {mean_std(ppl):>24} {mean_std(kl):>14}")
    lines.append("")
    lines.append("s / eval: wall time inside the search loop per evaluation (4 engines x seeds sharing one machine); "
                 "overhead: that minus the time spent evaluating = engine + journal + checkpoints + the exact "
                 "size of every genome repair tries (see --engine-overhead for the engines alone)")
    return "\n".join(lines)


def engine_overhead(population: int = 16, generations: int = 12) -> str:
    """ask + tell time per evaluation of each engine alone, on a synthetic 211-gene problem."""
    import tempfile

    from evo.search.engines import Problem, Score, make_engine
    from evo.types import Gene

    bits, embedding = (2, 3, 4, 5, 6, 8), (3, 4, 5, 6, 8)
    genes = []
    for unit in range(60):
        genes += [Gene(f"u{unit}.bits", "bits", bits, unit, unit // 2),
                  Gene(f"u{unit}.rescale", "rescale", (0.9, 1.0, 1.25), unit, unit // 2),
                  Gene(f"u{unit}.sparsity", "sparsity", (0.0, 0.1, 0.25), unit, unit // 2)]
    genes += [Gene(f"layer{i}.drop", "drop", ("none", "attention", "mlp", "layer"), None, i) for i in range(30)]
    genes.append(Gene("embedding.bits", "embedding_bits", embedding))

    def size_of(g):
        return int(sum(bits[g[3 * u]] * (1 - 0.1 * g[3 * u + 2]) for u in range(60)) * 1000 + embedding[g[-1]] * 5000)

    def quality(g):
        return sum((1 + u / 60) / bits[g[3 * u]] for u in range(60)) + 0.1 * sum(g[3 * u + 2] for u in range(60))

    budget = size_of(tuple([1] * 180 + [0] * 30 + [4]))
    lines = [f"engine overhead alone (synthetic {len(genes)}-gene problem, population {population}, "
             f"{generations} generations; ask + tell + optuna journal, no model)"]
    for name in ENGINES:
        engine_name, sampler = ENGINES[name]
        with tempfile.TemporaryDirectory() as workdir:
            problem = Problem(genes=tuple(genes), size_of=size_of, budget_bytes=budget, workdir=Path(workdir))
            engine = make_engine(engine_name, problem, population=population, seed=0, sampler=sampler)
            count, tic = 0, time.perf_counter()
            while engine.generation < generations or not engine.at_generation_boundary():
                requests = engine.ask()
                engine.tell([(r, Score(quality(r.genome), size_of(r.genome))) for r in requests])
                count += len(requests)
            seconds = time.perf_counter() - tic
        lines.append(f"  {name:<14} {count:>4} evaluations  {1000 * seconds / count:7.1f} ms / evaluation")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--generations", type=int, default=6, help="DEAP generations (sets the evaluation count)")
    parser.add_argument("--population", type=int, default=12)
    parser.add_argument("--engines", type=lambda s: s.split(","), default=list(ENGINES),
                        help=f"comma-separated, from {', '.join(ENGINES)}")
    parser.add_argument("--max-tokens", type=int, default=64 * SEQ_LEN, help="WikiText-2 tokens for perplexity")
    parser.add_argument("--out", default="runs/compare_engines", help="run directories and results go here")
    parser.add_argument("--jobs", type=int, default=1, help="(seed, engine) runs in this many parallel processes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    parser.add_argument("--engine-overhead", action="store_true", help="only time the engines on a synthetic problem")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # one job, for --jobs workers
    args = parser.parse_args()
    if args.engine_overhead:
        print(engine_overhead())
        return
    unknown = [e for e in args.engines if e not in ENGINES]
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}: use {', '.join(ENGINES)}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.only:
        run_job(args, args.only, lambda: job(args, args.only))
        return
    tic = time.perf_counter()
    baselines = run_job(args, "baselines", lambda: job_baselines(args))
    names = [f"seed{s}-{e}" for s in range(args.seeds) for e in args.engines]
    if args.jobs > 1:
        failed = run_parallel(args, [n for n in names if not (Path(args.out) / "results" / f"{n}.json").exists()],
                              script_argv(args))
        if failed:
            raise SystemExit(f"jobs failed: {', '.join(failed)}")
    results = {name: run_job(args, name, lambda name=name: job(args, name)) for name in names}
    runs = {e: [results[f"seed{s}-{e}"] for s in range(args.seeds)] for e in args.engines}
    table = render(baselines, runs)
    print(table)
    print(f"\ntotal wall time {time.perf_counter() - tic:.0f} s on {baselines['device']}")
    (Path(args.out) / "table.txt").write_text(table + "\n")
    write_json(Path(args.out) / "results.json", {"baselines": baselines, **results})


if __name__ == "__main__":
    main()
