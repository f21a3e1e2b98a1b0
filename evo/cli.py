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


def load_model_with_progress(spec: str, *, dtype: str, device: str):
    from evo.modelio import load_model

    with step(f"loading model {spec}"):
        return load_model(spec, dtype=dtype, device=device)


def _int_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    from evo.modelio import DEFAULT_MODEL

    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"alias, local dir, .gguf file or hub id (default {DEFAULT_MODEL})")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16, float16")


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
    return parser


@command("calibrate")
def calibrate_command(args: argparse.Namespace) -> int:
    from evo.calibration import CalibrationConfig, build_calibration_set
    from evo.data import read_corpus

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
    loaded = load_model_with_progress(args.model, dtype=args.dtype, device=args.device)
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


if __name__ == "__main__":
    sys.exit(main())
