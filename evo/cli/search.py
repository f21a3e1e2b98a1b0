"""`evo search`: the evolutionary search under a budget, with live progress; resumable."""

from __future__ import annotations

import argparse

from rich.table import Table

from evo.cli.progress import ProgressDisplay
from evo.progress import StepProgress
from evo.cli.ui import EXIT_INTERRUPTED, add_model_options, console, out
from evo.errors import EvoError

RUN_DIR_PATTERN = "runs/<model name>-<budget>MB-<space>-s<seed>"
CUDA_SAMPLES, CPU_SAMPLES = 16, 8  # --samples by device: the CPU's full evaluation is half as many tokens


def default_samples(device: str) -> int:
    """--samples when not given: CUDA_SAMPLES on a GPU, CPU_SAMPLES on the CPU (--help states both)."""
    from evo.modelio import resolve_device

    return CUDA_SAMPLES if resolve_device(device).type == "cuda" else CPU_SAMPLES


def default_run_dir(model: str, budget_mb: float, space: str, seed: int):
    """Where `evo search` writes without --run-dir (RUN_DIR_PATTERN; --help states it)."""
    from pathlib import Path

    return Path("runs") / f"{Path(model).stem}-{budget_mb:g}MB-{Path(space).stem}-s{seed}"


def add_parser(sub) -> None:
    se = sub.add_parser("search", help="evolutionary search for the best compressed model under a budget")
    se.add_argument("--budget-mb", type=float, default=None,
                    help="budget in MB = 10^6 bytes of the whole artifact on disk (tensors, manifest, tokenizer, config); "
                         "required for a new run")
    add_model_options(se, device="auto")
    se.add_argument("--corpus", nargs="+", default=["calibration_mix"], help="calibration corpus (default: embedded mix)")
    se.add_argument("--space", default="default", help="search space: a name (bits, default, double_compression, evop, gguf; in evo/search/spaces/) or a .toml file")
    se.add_argument("--engine", default="deap", help="deap (NSGA-II), optuna or random")
    se.add_argument("--sampler", default=None, help="with --engine optuna: tpe (default), nsga2 or random")
    se.add_argument("--generations", type=int, default=10, help="generations after the first population")
    se.add_argument("--population", type=int, default=12, help="genomes kept per generation (DEAP: 2x as offspring)")
    se.add_argument("--fitness", default="kl", choices=["kl", "ppl"], help="kl to the dense model (nats/token) or ppl (calibration perplexity)")
    se.add_argument("--seed", type=int, default=0, help="seed of the CCDS draw and of the engine")
    se.add_argument("--samples", type=int, default=None,
                    help=f"calibration sequences (CCDS) (default: {CUDA_SAMPLES} on CUDA, {CPU_SAMPLES} on the CPU, where "
                         "the full evaluations' forward passes are most of a short search's time)")
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
    se.add_argument("--workers", type=int, default=None,
                    help="score each batch on N Ray actors (one per GPU, or per CPU slot), which also code the "
                         "size table; the journal stays here (default: none, this process scores)")
    se.add_argument("--ray-address", default=None, metavar="ADDR",
                    help="with --workers: join this Ray cluster (host:port) instead of starting a local one")
    se.add_argument("--compile", default="auto",
                    choices=["auto", "off", "default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune"],
                    help="torch.compile the evaluator's forward and KL (CUDA only; eager on the CPU or if compiling "
                         "fails); reduce-overhead and max-autotune add CUDA graphs; auto (default) is reduce-overhead "
                         "on CUDA and off elsewhere; off avoids the first run's compile (1-2 min) and the graphs' memory on a small GPU. "
                         "Speed only: the same KL up to the fused kernels' rounding")
    se.add_argument("--cublas-workspace", default="torch", choices=["torch", "none"],
                    help="torch (default): cuBLAS with torch's workspace; none: without one "
                         "(CUBLAS_WORKSPACE_CONFIG=:0:0, TORCH_CUBLASLT_UNIFIED_WORKSPACE=0, unless you set either): "
                         "on an H200 the 64 x 512 full evaluation 1-2 %% faster, the loop's small screens not "
                         "(benchmarks/results/search_throughput_h200.md, session 30). Speed only: the same KL")
    se.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR with its own settings (options given must match "
                         "them; a larger --generations extends it)")


def _search_spec(args: argparse.Namespace):
    from evo.constants import MB
    from evo.search.loop import SearchSpec
    from evo.search.schedule import parse_stages

    if args.budget_mb is None:
        raise EvoError("--budget-mb is required for a new run, e.g. --budget-mb 70")
    return SearchSpec(
        budget_bytes=int(round(args.budget_mb * MB)), model=args.model, corpus=tuple(args.corpus), space=args.space,
        engine=args.engine, sampler=args.sampler, generations=args.generations, population=args.population, fitness=args.fitness,
        seed=args.seed, samples=args.samples if args.samples is not None else default_samples(args.device),
        clusters=args.clusters, seq_len=args.seq_len,
        screen_sequences=args.screen_sequences, screen_tokens=args.screen_tokens,
        multi_stage=not args.single_stage, seed_configs=tuple(args.seed_configs), dtype=args.dtype,
        stages=parse_stages(args.stages) if args.stages else (),
    )


def run(args: argparse.Namespace) -> int:
    from evo.evaluate.gemm_workspace import gemms_without_workspace
    from evo.search.lifecycle import check_budget_mb, is_complete_run, normalize_run_dir
    from evo.search.loop import open_session, run_search

    if getattr(args, "cublas_workspace", "torch") == "none":  # before the first CUDA matmul: torch reads it once
        print(gemms_without_workspace(), flush=True)

    check_budget_mb(args.budget_mb)
    if args.resume and args.run_dir and normalize_run_dir(args.resume) != normalize_run_dir(args.run_dir):
        raise EvoError("--resume and --run-dir name different directories: pass one of them")
    if args.resume:
        run_dir = normalize_run_dir(args.resume)
    elif args.run_dir:
        run_dir = normalize_run_dir(args.run_dir)
    else:
        if args.budget_mb is None:
            raise EvoError("--budget-mb is required for a new run, e.g. --budget-mb 70")
        run_dir = normalize_run_dir(default_run_dir(args.model.rstrip("/"), args.budget_mb, args.space, args.seed))
    settings = _worker_settings(args)
    resume = bool(args.resume) or is_complete_run(run_dir)
    given = getattr(args, "given_options", None)
    spec = _resume_spec(args, run_dir, given) if resume else _search_spec(args)
    try:
        with ProgressDisplay(console, fitness=spec.fitness) as display:
            session = open_session(spec, run_dir, resume=resume, device=args.device,
                                   trust_remote_code=args.trust_remote_code,
                                   status=lambda message: console.print(message), progress=display.step,
                                   extend=resume and (given is None or "generations" in given),
                                   compile=getattr(args, "compile", "auto"))
            if resume:
                console.print(f"resuming run {run_dir} ({session.spec.generations} generations, "
                              f"{len(session.store)} evaluations journaled)")
            pool = None
            if settings is not None:
                from evo.search.workers import WorkerPool

                try:
                    pool = WorkerPool.start(session, settings, trust_remote_code=args.trust_remote_code,
                                            status=lambda message: console.print(message))
                except EvoError:
                    _remove_if_untouched(session, run_dir, resume)
                    raise
            try:
                result = run_search(session, on_progress=display.search, size_workers=args.size_workers,
                                    on_table=lambda done, total: display.step(
                                        StepProgress("levels (quantizing and coding every tensor x setting)", done, total,
                                                     "levels")), workers=pool)
            finally:
                if pool is not None:
                    pool.close()
    except KeyboardInterrupt:
        console.print(f"interrupted: every finished evaluation is journaled in {run_dir}; "
                      f"continue with `evo search --resume {run_dir}` (it takes the run's own settings)",
                      soft_wrap=True, highlight=False)
        return EXIT_INTERRUPTED
    render_front(result, session.spec)
    export = (f"evo export {run_dir} --format gguf --out {run_dir / 'best.gguf'}"
              if getattr(session.space, "format", None) == "gguf" else f"evo export {run_dir} --out {run_dir / 'export'}")
    out.print(f"{result.evaluations} evaluations ({result.new_evaluations} in this process); run directory {run_dir}; "
              f"export with `{export}`")
    return 0


def _remove_if_untouched(session, run_dir, resume: bool) -> None:
    """A new run whose workers could not start, before any evaluation: leave nothing behind, so the
    corrected command starts afresh in the same place."""
    if not resume and len(session.store) == 0 and session.lock is not None:
        from evo.search.lifecycle import remove_run_directory

        remove_run_directory(run_dir, session.lock)
        session.lock = None


def _worker_settings(args: argparse.Namespace):
    """--workers / --ray-address as WorkerSettings (None: no Ray), checked before anything loads."""
    workers, address = getattr(args, "workers", None), getattr(args, "ray_address", None)
    if workers is None:
        if address is not None:
            raise EvoError("--ray-address needs --workers N (the actors to start on the cluster)")
        return None
    from evo.search.workers import WorkerSettings, require_ray

    settings = WorkerSettings(workers=workers, address=address)
    require_ray()  # Ray missing is said before the model loads
    from evo.modelio import resolve_device

    settings.check_local(resolve_device(getattr(args, "device", "cpu")).type)  # before the run directory exists
    return settings


# `evo search` option → SearchSpec field, where the names differ.
_SPEC_FIELD = {"budget_mb": "budget_bytes", "single_stage": "multi_stage"}


def _resume_spec(args: argparse.Namespace, run_dir, given: set[str] | None):
    """The spec to resume with: the run's own settings, replaced by the options given on the
    command line (a given option that differs from the run's is refused by open_session)."""
    from dataclasses import fields, replace

    from evo.constants import MB
    from evo.search.loop import run_spec

    _, stored = run_spec(run_dir)
    if given is None:  # called without a command line (tests, the API): every option counts
        given = {f.name for f in fields(stored)} | set(_SPEC_FIELD)
    if args.budget_mb is None:
        given = given - {"budget_mb"}
        args = argparse.Namespace(**{**vars(args), "budget_mb": stored.budget_bytes / MB})
    asked = _search_spec(args)
    names = {_SPEC_FIELD.get(name, name) for name in given} & {f.name for f in fields(stored)}
    return replace(stored, **{name: getattr(asked, name) for name in names})


def given_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The `evo search` options written on the command line (not left at their defaults), so that
    a resume takes the run's own settings for the others."""
    search = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["search"]
    for action in search._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command"}


def render_front(result, spec) -> None:
    table = Table(title=f"Pareto front under {spec.budget_bytes / 1e6:.3f} MB ({spec.fitness}, lower is better)")
    for name in ("MB", spec.fitness, "chosen"):
        table.add_column(name, justify="right")
    for point in result.front:
        chosen = "*" if point == result.best else ""
        table.add_row(f"{point.size_bytes / 1e6:.3f}", f"{point.quality:.4f}", chosen)
    out.print(table)
