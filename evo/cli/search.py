"""`evo search`: the evolutionary search under a budget, with live progress; resumable."""

from __future__ import annotations

import argparse

from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from evo.cli.ui import EXIT_INTERRUPTED, add_model_options, console, out


def add_parser(sub) -> None:
    se = sub.add_parser("search", help="evolutionary search for the best compressed model under a budget")
    se.add_argument("--budget-mb", type=float, required=True,
                    help="budget in MB = 10^6 bytes of the whole artifact on disk (tensors, manifest, tokenizer, config)")
    add_model_options(se, device="auto")
    se.add_argument("--corpus", nargs="+", default=["calibration_mix"], help="calibration corpus (default: embedded mix)")
    se.add_argument("--space", default="default", help="search space: a name in evo/search/spaces/ (default, bits, evop, double_compression) or a .toml file")
    se.add_argument("--engine", default="deap", help="deap (NSGA-II, default), optuna or random")
    se.add_argument("--sampler", default=None, help="with --engine optuna: tpe (default), nsga2 or random")
    se.add_argument("--generations", type=int, default=10)
    se.add_argument("--population", type=int, default=12)
    se.add_argument("--fitness", default="kl", choices=["kl", "ppl"], help="kl to the dense model (default) or ppl")
    se.add_argument("--seed", type=int, default=0)
    se.add_argument("--samples", type=int, default=16, help="calibration sequences (CCDS)")
    se.add_argument("--seq-len", type=int, default=256, help="tokens per calibration sequence")
    se.add_argument("--clusters", type=int, default=8)
    se.add_argument("--screen-sequences", type=int, default=4, help="stage-1 screening: sequences")
    se.add_argument("--screen-tokens", type=int, default=128, help="stage-1 screening: tokens per sequence")
    se.add_argument("--single-stage", action="store_true", help="score every offspring on the full calibration set")
    se.add_argument("--stages", default=None, metavar="T[,T:N]...",
                    help="EvoPress's schedule: tokens per stage, survivors of each later stage, e.g. "
                         "2048,16384:16,131072:4 (the last = --samples × --seq-len)")
    se.add_argument("--seed-configs", nargs="*", default=[], help="known configs to include in the first population")
    se.add_argument("--run-dir", default=None, help="run directory (default runs/<model>-<budget>MB-s<seed>)")
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
        run_dir = Path("runs") / f"{Path(args.model).stem}-{args.budget_mb:g}MB-{args.space}-s{args.seed}"
    resume = bool(args.resume) or is_run(run_dir)
    if resume and not args.resume:
        console.print(f"{run_dir} already holds a run with these options: resuming it")
    session = open_session(spec, run_dir, resume=resume, device=args.device,
                           status=lambda message: console.print(message))
    try:
        with SearchDisplay(session.spec) as display:
            result = run_search(session, on_progress=display.update, size_workers=args.size_workers,
                                on_table=display.table)
    except KeyboardInterrupt:
        console.print(f"interrupted: every finished evaluation is journaled in {run_dir}; "
                      f"continue with `evo search --resume {run_dir} --budget-mb {args.budget_mb:g}` "
                      "and the same options")
        return EXIT_INTERRUPTED
    render_front(result, session.spec)
    out.print(f"{result.evaluations} evaluations ({result.new_evaluations} in this process); run directory {run_dir}; "
              f"export with `evo export {run_dir} --out {run_dir / 'export'}`")
    return 0


class SearchDisplay:
    """Rich live progress on a terminal, one plain line per evaluation otherwise."""

    def __init__(self, spec) -> None:
        self.spec = spec
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[detail]}"), console=console,
                                 disable=not console.is_terminal)
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        self.task = self.progress.add_task("search", total=None, detail="")
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def table(self, done: int, total: int) -> None:
        """Progress of the size table's coding (before the first evaluation)."""
        if console.is_terminal:
            self.progress.update(self.task, completed=done, total=total, detail="coding the size table")
        elif done == total or done % max(1, total // 10) == 0:
            console.print(f"size table: {done}/{total} (tensor, setting) pairs coded", highlight=False)

    def update(self, p) -> None:
        best = f"{p.best_quality:.4f} at {p.best_bytes / 1e6:.3f} MB" if p.best_quality is not None else "-"
        eta = f"{p.eta_seconds / 60:.1f} min" if p.eta_seconds is not None else "-"
        detail = (f"gen {p.generation}/{p.generations} stage {p.stage} best {self.spec.fitness} {best} "
                  f"front {p.front_size} {p.evals_per_second:.2f} eval/s ETA {eta}")
        if console.is_terminal:
            self.progress.update(self.task, completed=p.evaluations_done, total=p.evaluations_total, detail=detail)
        else:
            console.print(f"[{p.evaluations_done}/{p.evaluations_total}] {detail}", highlight=False)


def render_front(result, spec) -> None:
    table = Table(title=f"Pareto front under {spec.budget_bytes / 1e6:.3f} MB ({spec.fitness}, lower is better)")
    for name in ("MB", spec.fitness, "chosen"):
        table.add_column(name, justify="right")
    for point in result.front:
        chosen = "*" if point == result.best else ""
        table.add_row(f"{point.size_bytes / 1e6:.3f}", f"{point.quality:.4f}", chosen)
    out.print(table)
