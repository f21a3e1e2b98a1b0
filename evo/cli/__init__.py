"""The `evo` command line: thin commands that parse, call the library and render with rich.

Every user error is an EvoError, printed on one line by `main`, exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from evo import __version__
from evo.errors import EvoError

console = Console(stderr=True)
out = Console()

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        COMMANDS[name] = fn
        return fn

    return register


@contextmanager
def progress_bar():
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    ) as progress:
        yield progress


@contextmanager
def step(description: str):
    """A spinner while a long step runs (plain lines when not on a TTY)."""
    start = time.perf_counter()
    if console.is_terminal:
        with console.status(description):
            yield
    else:
        console.print(f"{description} ...")
        yield
    console.print(f"{description}: done in {time.perf_counter() - start:.1f} s")


def load_model_with_progress(spec: str, *, dtype: str, device: str, trust_remote_code: bool = False):
    from evo.modelio import load_model

    with step(f"loading model {spec}"):
        return load_model(spec, dtype=dtype, device=device, trust_remote_code=trust_remote_code)


def _add_trust_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run the Python code a hub model ships (auto_map); off by default: such models are refused")


def _int_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def _add_model_options(parser: argparse.ArgumentParser, device: str = "cpu") -> None:
    from evo.modelio import DEFAULT_MODEL

    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"alias, local dir, .gguf file or hub id (default {DEFAULT_MODEL})")
    parser.add_argument("--device", default=device, help=f"cpu, cuda, cuda:N or auto = CUDA when available (default {device})")
    parser.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16, float16")
    _add_trust_option(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evo", description="Compress a causal LM to fit a memory budget.")
    parser.add_argument("--version", action="version", version=f"evo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    cal = sub.add_parser("calibrate", help="draw a CCDS calibration set (cluster-covering) from a corpus")
    _add_model_options(cal)
    cal.add_argument("--corpus", nargs="+", default=["calibration_mix"],
                     help="files, directories or built-in names (calibration_mix [embedded default], wikitext2, c4)")
    cal.add_argument("--text-field", default="text", help="field holding the text in .jsonl / .parquet (default text)")
    cal.add_argument("--samples", type=int, default=32, help="calibration sequences to draw (default 32)")
    cal.add_argument("--heldout", type=int, default=32, help="held-out sequences, disjoint from calibration (default 32)")
    cal.add_argument("--clusters", type=_int_or_auto, default=8, help="k for KMeans, or 'auto' (silhouette) (default 8)")
    cal.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (default 512)")
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--strategy", default="ccds", choices=["ccds", "random"], help="ccds, or random for ablations")
    cal.add_argument("--within", default="spread", choices=["spread", "nearest", "random"],
                     help="which sequences of a cluster: spread (nearest to sub-cluster centroids, default), "
                          "nearest to the centroid, or random")
    cal.add_argument("--layer", type=int, default=None, help="decoder layer embedded (default num_layers // 4)")
    cal.add_argument("--embed-tokens", type=int, default=128, help="tokens of each sequence mean-pooled (default 128)")
    cal.add_argument("--max-candidates", type=int, default=4096, help="embed at most this many sequences (default 4096)")
    cal.add_argument("--batch-size", type=int, default=8)
    cal.add_argument("--out", default="runs/calibration.json", help="output JSON file (default runs/calibration.json)")
    comp = sub.add_parser("compress", help="write the compressed artifact of a configuration (TOML or JSON)")
    _add_model_options(comp)
    comp.add_argument("--config", required=True, help="compression config (.toml or .json), e.g. a run's best.toml")
    comp.add_argument("--out", required=True, help="artifact directory to write")
    comp.add_argument("--calibration", default=None,
                      help="calibration set (evo calibrate) for wanda/linf pruning statistics; default: the embedded corpus")
    comp.add_argument("--overwrite", action="store_true", help="replace an existing evo artifact at --out")

    ev = sub.add_parser("eval", help="perplexity and zero-shot accuracy of a model or an artifact, the standard way")
    ev.add_argument("model", help="artifact directory, alias, local model dir, .gguf file or hub id")
    ev.add_argument("--dataset", default=None,
                    help="perplexity on wikitext2, c4, calibration_mix or a PATH (default wikitext2 unless --tasks)")
    ev.add_argument("--tasks", default=None,
                    help="zero-shot tasks, comma-separated: hellaswag, piqa, arc_easy, arc_challenge, winogrande, "
                         "boolq (name=PATH for another file)")
    ev.add_argument("--limit", type=int, default=None, help="score only the first N items of each task")
    ev.add_argument("--seq-len", type=int, default=512)
    ev.add_argument("--max-tokens", type=int, default=None, help="use at most this many tokens (whole windows)")
    ev.add_argument("--batch-size", type=int, default=4)
    ev.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ev.add_argument("--dtype", default="auto")
    _add_trust_option(ev)
    ev.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    an = sub.add_parser("analyze", help="compressibility study: bits/weight on disk vs error for a grid of settings")
    _add_model_options(an)
    an.add_argument("--out", default="runs/analyze", help="folder for analysis.csv and analysis.png")
    an.add_argument("--bits", type=int, nargs="+", default=None, help="bit-widths (default 2 3 4 8)")
    an.add_argument("--rescales", type=float, nargs="+", default=None, help="rescale factors (default 0.75 1 1.5 2)")
    an.add_argument("--sparsities", type=float, nargs="+", default=None, help="sparsities (default 0 0.25 0.5)")
    an.add_argument("--layers", type=int, default=4, help="evenly spaced decoder layers studied (default 4)")

    se = sub.add_parser("search", help="evolutionary search for the best compressed model under a budget")
    se.add_argument("--budget-mb", type=float, required=True,
                    help="budget in MB = 10^6 bytes of the whole artifact on disk (tensors, manifest, tokenizer, config)")
    _add_model_options(se, device="auto")
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
    se.add_argument("--seed-configs", nargs="*", default=[], help="known configs to include in the first population")
    se.add_argument("--run-dir", default=None, help="run directory (default runs/<model>-<budget>MB-s<seed>)")
    se.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR")

    rep = sub.add_parser("report", help="a run's Pareto front (table, PNG), convergence curve and evaluations CSV")
    rep.add_argument("run_dir")
    rep.add_argument("--out", default=None, help="folder for the report (default RUN_DIR/report)")
    rep.add_argument("--baseline", action="append", default=[], metavar="NAME=MB:QUALITY",
                     help="a reference point on the plot: NAME=MB:QUALITY or NAME=ARTIFACT_DIR:QUALITY (repeatable)")
    bl = sub.add_parser("baseline", help="write the artifact of a baseline: uniform RTN or ShortGPT layer removal")
    bls = bl.add_subparsers(dest="baseline", required=True, metavar="{uniform,shortgpt}")
    uni = bls.add_parser("uniform", help="every decoder linear at --bits (RTN, asymmetric, int zero points)")
    uni.add_argument("--bits", type=int, required=True, help="2, 3, 4, 5, 6, 8 (16 keeps bf16)")
    uni.add_argument("--group-size", default="128", help="inputs per scale: 32, 64, 128 or channel (default 128)")
    uni.add_argument("--embedding-bits", type=int, default=8, help="token embedding / tied head bits (default 8)")
    sg = bls.add_parser("shortgpt", help="drop the --drop layers of lowest block influence (ShortGPT), rest bf16")
    sg.add_argument("--drop", type=int, required=True, help="how many decoder layers to remove")
    sg.add_argument("--calibration", default=None,
                    help="CalibrationSet JSON (evo calibrate) for block influence (default: the embedded corpus)")
    for baseline in (uni, sg):
        _add_model_options(baseline)
        baseline.add_argument("--out", required=True, help="artifact directory to write (config beside it as OUT.toml)")
        baseline.add_argument("--overwrite", action="store_true", help="replace an existing evo artifact at --out")
    ex = sub.add_parser("export", help="write the best config of a run under a budget, and its artifact")
    ex.add_argument("run_dir")
    ex.add_argument("--budget-mb", type=float, default=None, help="any budget on the run's front (default: the run's)")
    ex.add_argument("--out", required=True, help="output directory: best.toml and the artifact in it")
    ex.add_argument("--device", default="cpu")
    _add_trust_option(ex)
    ex.add_argument("--overwrite", action="store_true")
    return parser


@command("calibrate")
def calibrate_command(args: argparse.Namespace) -> int:
    from evo.data.ccds import CalibrationConfig, build_calibration_set
    from evo.data.corpus import read_corpus

    config = CalibrationConfig(
        samples=args.samples,
        clusters=args.clusters,
        heldout=args.heldout,
        seq_len=args.seq_len,
        seed=args.seed,
        strategy=args.strategy,
        within_cluster=args.within,
        layer=args.layer,
        embed_tokens=args.embed_tokens,
        max_candidates=args.max_candidates,
        batch_size=args.batch_size,
    )
    with step("reading corpus"):
        corpus = read_corpus(args.corpus, text_field=args.text_field)
    loaded = load_model_with_progress(args.model, dtype=args.dtype, device=args.device,
                                      trust_remote_code=args.trust_remote_code)
    start = time.perf_counter()
    with progress_bar() as progress:
        task = progress.add_task("embedding sequences", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        calibration_set = build_calibration_set(loaded, corpus, config, on_embed_progress=on_progress)
    elapsed = time.perf_counter() - start
    path = calibration_set.save(args.out)
    render_calibration(calibration_set)
    prov = calibration_set.provenance
    out.print(
        f"{len(calibration_set.calibration)} calibration + {len(calibration_set.heldout)} held-out sequences "
        f"of {prov.seq_len} tokens from {prov.n_candidates} candidates, k={prov.n_clusters}, "
        f"ARI(cluster, source)={calibration_set.adjusted_rand_index:.3f}, "
        f"sources covered {len(set(calibration_set.calibration.sources))}/{len(prov.corpus_files)}, "
        f"{elapsed:.1f} s → {path}"
    )
    return 0


@command("compress")
def compress_command(args: argparse.Namespace) -> int:
    from evo.data.calibset import CalibrationSet
    from evo.compress.config import CompressionConfig
    from evo.compress.export import compress_and_write, default_stats_tokens, needs_stats
    from evo.evaluate.stats import collect_activation_stats

    config = CompressionConfig.load(args.config)
    loaded = load_model_with_progress(args.model, dtype=args.dtype, device=args.device,
                                      trust_remote_code=args.trust_remote_code)
    config.validate_against(loaded.info)
    stats = None
    if needs_stats(config, loaded):
        tokens = (CalibrationSet.load(args.calibration).calibration.token_ids if args.calibration
                  else default_stats_tokens(loaded.tokenizer))
        with step(f"collecting activation statistics on {len(tokens)} sequences"):
            stats = collect_activation_stats(loaded.model, loaded.info, tokens)
    with step("compressing and writing the artifact"):
        summary = compress_and_write(loaded, config, args.out, stats=stats, overwrite=args.overwrite)
    render_artifact(summary)
    return 0


def render_artifact(summary) -> None:
    out.print(f"artifact {summary.path}: {summary.total_bytes:,} bytes ({summary.total_bytes / 1e6:.3f} MB) = "
              f"{summary.tensor_bytes:,} tensor bytes + {summary.metadata_bytes:,} metadata bytes")


def is_artifact(path: str) -> bool:
    import os

    # lexists: a manifest.json that is a link or a device is a (refused) artifact, not a model dir.
    return os.path.lexists(os.path.join(path, "manifest.json"))


def load_for_eval(spec: str, *, device: str, dtype: str, trust_remote_code: bool = False):
    """(model, tokenizer) of an artifact directory or of any model evo.modelio loads."""
    if is_artifact(spec):
        from evo.compress.artifact import load

        with step(f"loading artifact {spec}"):
            return load(spec, device=device, dtype=None if dtype == "auto" else dtype)
    loaded = load_model_with_progress(spec, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    return loaded.model, loaded.tokenizer


@command("eval")
def eval_command(args: argparse.Namespace) -> int:
    import json

    from evo.data.corpus import read_text

    tasks = _load_tasks(args) if args.tasks else []  # bad task names and files fail before the model loads
    dataset = args.dataset or (None if tasks else "wikitext2")
    text = read_text(dataset) if dataset else None
    model, tokenizer = load_for_eval(args.model, device=args.device, dtype=args.dtype,
                                     trust_remote_code=args.trust_remote_code)
    record: dict = {"model": args.model}
    if text is not None:
        record.update({"dataset": dataset, **_perplexity(model, tokenizer, text, args).to_dict()})
    if tasks:
        record["tasks"] = {name: result.to_dict() for name, result in _zero_shot(model, tokenizer, tasks, args)}
    if args.json:
        print(json.dumps(record))
        return 0
    if text is not None:
        table = Table(title=f"perplexity on {dataset}")
        for key in ("model", "ppl", "mean_nll", "tokens_predicted", "windows", "seq_len"):
            table.add_column(key)
        table.add_row(args.model, f"{record['ppl']:.3f}", f"{record['mean_nll']:.4f}", str(record["tokens_predicted"]),
                      str(record["windows"]), str(record["seq_len"]))
        out.print(table)
    if tasks:
        table = Table(title=f"zero-shot accuracy of {args.model}" + (f" (first {args.limit} items)" if args.limit else ""))
        for key in ("task", "n", "acc", "acc_norm"):
            table.add_column(key, justify="right")
        for name, result in record["tasks"].items():
            norm = f"{result['acc_norm']:.4f} ± {result['acc_norm_stderr']:.4f}" if result["acc_norm"] is not None else "-"
            table.add_row(name, str(result["n"]), f"{result['acc']:.4f} ± {result['acc_stderr']:.4f}", norm)
        out.print(table)
    return 0


def _load_tasks(args: argparse.Namespace):
    from evo.data.tasks import TASKS, load_task, parse_tasks

    if args.limit is not None and args.limit < 1:
        raise EvoError("--limit must be at least 1")
    return [(name, TASKS[name].metrics, load_task(name, path, args.limit)) for name, path in parse_tasks(args.tasks)]


def _perplexity(model, tokenizer, text: str, args: argparse.Namespace):
    from evo.evaluate.perplexity import perplexity, tokenize_for_eval

    token_ids = tokenize_for_eval(tokenizer, text)
    with progress_bar() as progress:
        task = progress.add_task("perplexity", total=None)
        return perplexity(model, token_ids, seq_len=args.seq_len, max_tokens=args.max_tokens,
                          batch_size=args.batch_size,
                          progress=lambda done, total: progress.update(task, completed=done, total=total))


def _zero_shot(model, tokenizer, tasks, args: argparse.Namespace):
    from evo.evaluate.zeroshot import score_task

    with progress_bar() as progress:
        for name, metrics, examples in tasks:
            bar = progress.add_task(name, total=None)
            yield name, score_task(name, model, tokenizer, examples, metrics=metrics, batch_size=4 * args.batch_size,
                                   progress=lambda done, total, bar=bar: progress.update(bar, completed=done, total=total))


def _search_spec(args: argparse.Namespace):
    from evo.search.loop import MB, SearchSpec

    return SearchSpec(
        budget_bytes=int(round(args.budget_mb * MB)), model=args.model, corpus=tuple(args.corpus), space=args.space,
        engine=args.engine, sampler=args.sampler, generations=args.generations, population=args.population, fitness=args.fitness,
        seed=args.seed, samples=args.samples, clusters=args.clusters, seq_len=args.seq_len,
        screen_sequences=args.screen_sequences, screen_tokens=args.screen_tokens,
        multi_stage=not args.single_stage, seed_configs=tuple(args.seed_configs),
    )


@command("search")
def search_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from evo.search.loop import open_session, run_search

    spec = _search_spec(args)
    if args.resume:
        run_dir = Path(args.resume)
    elif args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        run_dir = Path("runs") / f"{Path(args.model).stem}-{args.budget_mb:g}MB-{args.space}-s{args.seed}"
    resume = bool(args.resume) or (run_dir / "run.json").exists()
    if resume and not args.resume:
        console.print(f"{run_dir} already holds a run with these options: resuming it")
    session = open_session(spec, run_dir, resume=resume, device=args.device, dtype=args.dtype,
                           trust_remote_code=args.trust_remote_code, status=lambda message: console.print(message))
    try:
        with SearchDisplay(session.spec) as display:
            result = run_search(session, on_progress=display.update)
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
        chosen = "*" if result.best is not None and point["genome"] == result.best["genome"] else ""
        table.add_row(f"{point['size_bytes'] / 1e6:.3f}", f"{point['quality']:.4f}", chosen)
    out.print(table)


@command("export")
def export_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from evo.compress.config import CompressionConfig
    from evo.compress.export import compress_and_write
    from evo.search.loop import MB, SearchSpec, choose_from_front, open_session
    from evo.search.store import RunStore

    run_dir = Path(args.run_dir)
    budget = int(round(args.budget_mb * MB)) if args.budget_mb is not None else None
    point, budget = choose_from_front(run_dir, budget)  # fails before loading anything
    spec = SearchSpec.from_dict(RunStore.open(run_dir).spec()["search"])
    session = open_session(spec, run_dir, resume=True, device=args.device,
                           trust_remote_code=args.trust_remote_code, status=lambda message: console.print(message))
    config = CompressionConfig.from_dict(point["config"])
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / "best.toml"
    config.save(config_path)
    with step("compressing and writing the artifact"):
        summary = compress_and_write(session.loaded, config, out_dir / "artifact", stats=session.activation_stats,
                                     size_cache=session.size_model.size_cache, overwrite=args.overwrite)
    render_artifact(summary)
    if summary.total_bytes != point["size_bytes"]:
        raise EvoError(f"the artifact has {summary.total_bytes} bytes but the run recorded {point['size_bytes']}: "
                       "the size cache is stale; delete the run's size_cache and export again")
    out.print(f"config {config_path} ({spec.fitness} {point['quality']:.4f} recorded); artifact bytes "
              f"{summary.total_bytes:,} <= budget {budget:,}")
    return 0


@command("report")
def report_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from evo.report import Baseline, build_report, write_report

    baselines = tuple(Baseline.parse(text) for text in args.baseline)
    report = build_report(args.run_dir)
    paths = write_report(report, Path(args.out) if args.out else Path(args.run_dir) / "report", baselines)
    table = Table(title=f"Pareto front of {args.run_dir} under {report.budget_bytes / 1e6:.3f} MB "
                        f"({report.metric}, lower is better)")
    for name in ("MB", report.metric, "evaluation #", "chosen"):
        table.add_column(name, justify="right")
    for entry in report.front:
        table.add_row(f"{entry.size_bytes / 1e6:.3f}", f"{entry.quality:.4f}", str(entry.index),
                      "*" if entry is report.chosen else "")
    out.print(table)
    summary = report.summary()
    out.print(f"{summary['evaluations']} evaluations ({summary['final_stage_evaluations']} at the final stage), "
              f"{summary['evaluation_seconds']:.0f} s evaluating, engine {report.engine}")
    for kind, path in paths.items():
        out.print(f"{kind}: {path}", soft_wrap=True, highlight=False)
    return 0


@command("baseline")
def baseline_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from evo.compress.export import compress_and_write

    make_config = BASELINES[args.baseline](args)  # option errors surface before the model loads
    loaded = load_model_with_progress(args.model, dtype=args.dtype, device=args.device,
                                      trust_remote_code=args.trust_remote_code)
    config = make_config(loaded)
    with step("compressing and writing the artifact"):
        summary = compress_and_write(loaded, config, args.out, overwrite=args.overwrite)
    config_path = Path(str(Path(args.out)).rstrip("/") + ".toml")
    config.save(config_path)
    render_artifact(summary)
    out.print(f"config {config_path}; evaluate with `evo eval {args.out}`")
    return 0


def _uniform_baseline(args: argparse.Namespace):
    from evo.baselines import uniform_config

    group = args.group_size if args.group_size == "channel" else _positive_int(args.group_size, "--group-size")
    config = uniform_config(args.bits, group_size=group, embedding_bits=args.embedding_bits)
    return lambda loaded: config


def _shortgpt_baseline(args: argparse.Namespace):
    from evo.baselines import block_influence, shortgpt_config
    from evo.data.calibset import CalibrationSet
    from evo.compress.export import default_stats_tokens

    if args.drop < 1:
        raise EvoError(f"--drop {args.drop}: drop at least one layer")
    calibration = CalibrationSet.load(args.calibration) if args.calibration else None

    def make(loaded):
        if args.drop >= loaded.info.num_layers:
            raise EvoError(f"--drop {args.drop}: the model has {loaded.info.num_layers} decoder layers; "
                           f"drop between 1 and {loaded.info.num_layers - 1}")
        tokens = calibration.calibration.token_ids if calibration else default_stats_tokens(loaded.tokenizer)
        with step(f"block influence of {loaded.info.num_layers} layers on {len(tokens)} sequences"):
            influence = block_influence(loaded.model, loaded.info, tokens)
        config = shortgpt_config(influence, args.drop)
        out.print("dropping layers " + ", ".join(f"{i} (BI {influence[i]:.4f})" for i in sorted(config.drops)))
        return config

    return make


BASELINES = {"uniform": _uniform_baseline, "shortgpt": _shortgpt_baseline}


def _positive_int(text: str, option: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise EvoError(f"{option} {text!r}: use a positive integer or 'channel'")
    return value


@command("analyze")
def analyze_command(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from evo.analyze import SUMMARY_COLUMNS, AnalysisGrid, analyze, plot_analysis, rows_to_csv, summary_rows

    grid = AnalysisGrid()
    changes = {k: tuple(v) for k, v in (("bits", args.bits), ("rescales", args.rescales),
                                         ("sparsities", args.sparsities)) if v}
    grid = replace(grid, num_layers=args.layers, **changes)
    loaded = load_model_with_progress(args.model, dtype=args.dtype, device=args.device,
                                      trust_remote_code=args.trust_remote_code)
    with progress_bar() as progress:
        task = progress.add_task("compressing and measuring", total=None)
        rows = analyze(loaded, grid, progress=lambda done, total: progress.update(task, completed=done, total=total))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = rows_to_csv(rows, out_dir / "analysis.csv")
    png_path = plot_analysis(rows, out_dir / "analysis.png", model_name=loaded.info.model_id)
    table = Table(title=f"compressibility of {loaded.info.model_id} (all roles pooled)")
    for header, _, _ in SUMMARY_COLUMNS:
        table.add_column(header, justify="right")
    for row in summary_rows(rows):
        table.add_row(*row.values())
    out.print(table)
    out.print(f"{len(rows)} rows → {csv_path}, plot → {png_path}")
    return 0


def render_calibration(calibration_set) -> None:
    table = Table(title="CCDS clusters")
    for name, justify in (("cluster", "right"), ("size", "right"), ("drawn", "right"),
                          ("dominant source", "left"), ("share", "right"), ("snippet", "left")):
        table.add_column(name, justify=justify, overflow="ellipsis", no_wrap=True,
                         max_width=40 if name == "snippet" else None)
    for c in calibration_set.clusters:
        table.add_row(str(c.cluster), str(c.size), str(c.drawn), c.dominant_source,
                      f"{c.dominant_share:.0%}", c.snippet)
    out.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except EvoError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        console.print("interrupted")
        return EXIT_INTERRUPTED

