"""`evo search`: the evolutionary search under a budget, with live progress; resumable."""

from __future__ import annotations

import argparse

from rich.table import Table

from evo.cli.progress import ProgressDisplay
from evo.progress import StepProgress
from evo.cli.ui import EXIT_INTERRUPTED, add_model_options, console, out

RUN_DIR_PATTERN = "runs/<model name>-<budget>MB-<space>-s<seed>"


def default_run_dir(model: str, budget_mb: float, space: str, seed: int):
    """Where `evo search` writes without --run-dir (RUN_DIR_PATTERN; --help states it)."""
    from pathlib import Path

    return Path("runs") / f"{Path(model).stem}-{budget_mb:g}MB-{Path(space).stem}-s{seed}"


def add_parser(sub) -> None:
    se = sub.add_parser("search", help="evolutionary search for the best compressed model under a budget")
    se.add_argument("--budget-mb", type=float, required=True,
                    help="budget in MB = 10^6 bytes of the whole artifact on disk (tensors, manifest, tokenizer, config)")
    add_model_options(se, device="auto")
    se.add_argument("--corpus", nargs="+", default=["calibration_mix"], help="calibration corpus (default: embedded mix)")
    se.add_argument("--space", default="default", help="search space: a name (bits, default, double_compression, evop; in evo/search/spaces/) or a .toml file")
    se.add_argument("--engine", default="deap", help="deap (NSGA-II), optuna or random")
    se.add_argument("--sampler", default=None, help="with --engine optuna: tpe (default), nsga2 or random")
    se.add_argument("--generations", type=int, default=10, help="generations after the first population")
    se.add_argument("--population", type=int, default=12, help="genomes kept per generation (DEAP: 2x as offspring)")
    se.add_argument("--fitness", default="kl", choices=["kl", "ppl"], help="kl to the dense model (nats/token) or ppl (calibration perplexity)")
    se.add_argument("--seed", type=int, default=0, help="seed of the CCDS draw and of the engine")
    se.add_argument("--samples", type=int, default=16, help="calibration sequences (CCDS)")
    se.add_argument("--seq-len", type=int, default=256, help="tokens per calibration sequence")
    se.add_argument("--clusters", type=int, default=8, help="CCDS k-means clusters")
    se.add_argument("--screen-sequences", type=int, default=4, help="stage-1 screening: sequences")
    se.add_argument("--screen-tokens", type=int, default=128, help="stage-1 screening: tokens per sequence")
    se.add_argument("--single-stage", action="store_true", help="score every offspring on the full calibration set")
    se.add_argument("--stages", default=None, metavar="T[,T:N]...",
                    help="EvoPress's schedule: tokens per stage, survivors of each later stage, e.g. "
                         "2048,16384:16,131072:4 (the last = --samples × --seq-len)")
    se.add_argument("--seed-configs", nargs="*", default=[], help="known configs to include in the first population")
    se.add_argument("--run-dir", default=None, help=f"run directory (default: {RUN_DIR_PATTERN}, e.g. {default_run_dir('smollm2-135m', 70, 'default', 0)})")
    se.add_argument("--size-workers", type=int, default=None,
                    help="processes that code the space's size table at the start (default: all cores)")
    se.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR")


def _search_spec(args: argparse.Namespace):
    from evo.constants import MB
    from evo.search.loop import SearchSpec
    from evo.search.schedule import parse_stages

    return SearchSpec(
        budget_bytes=int(round(args.budget_mb * MB)), model=args.model, corpus=tuple(args.corpus), space=args.space,
        engine=args.engine, sampler=args.sampler, generations=args.generations, population=args.population, fitness=args.fitness,
        seed=args.seed, samples=args.samples, clusters=args.clusters, seq_len=args.seq_len,
        screen_sequences=args.screen_sequences, screen_tokens=args.screen_tokens,
        multi_stage=not args.single_stage, seed_configs=tuple(args.seed_configs), dtype=args.dtype,
        stages=parse_stages(args.stages) if args.stages else (),
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from evo.search.loop import is_run, open_session, run_search

    spec = _search_spec(args)
    if args.resume:
        run_dir = Path(args.resume)
    elif args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        run_dir = default_run_dir(args.model, args.budget_mb, args.space, args.seed)
    resume = bool(args.resume) or is_run(run_dir)
    if resume and not args.resume:
        console.print(f"{run_dir} already holds a run with these options: resuming it")
    try:
        with ProgressDisplay(console, fitness=spec.fitness) as display:
            session = open_session(spec, run_dir, resume=resume, device=args.device,
                                   trust_remote_code=args.trust_remote_code,
                                   status=lambda message: console.print(message), progress=display.step)
            result = run_search(session, on_progress=display.search, size_workers=args.size_workers,
                                on_table=lambda done, total: display.step(
                                    StepProgress("size table (coding every tensor x setting)", done, total, "pairs")))
    except KeyboardInterrupt:
        console.print(f"interrupted: every finished evaluation is journaled in {run_dir}; "
                      f"continue with `evo search --resume {run_dir} --budget-mb {args.budget_mb:g}` "
                      "and the same options")
        return EXIT_INTERRUPTED
    render_front(result, session.spec)
    out.print(f"{result.evaluations} evaluations ({result.new_evaluations} in this process); run directory {run_dir}; "
              f"export with `evo export {run_dir} --out {run_dir / 'export'}`")
    return 0


def render_front(result, spec) -> None:
    table = Table(title=f"Pareto front under {spec.budget_bytes / 1e6:.3f} MB ({spec.fitness}, lower is better)")
    for name in ("MB", spec.fitness, "chosen"):
        table.add_column(name, justify="right")
    for point in result.front:
        chosen = "*" if point == result.best else ""
        table.add_row(f"{point.size_bytes / 1e6:.3f}", f"{point.quality:.4f}", chosen)
    out.print(table)
