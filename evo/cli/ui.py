"""What every command shares: the consoles, progress display, model options and small renderers.
The library never prints; commands render its results here, with rich."""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from evo.errors import EvoError

console = Console(stderr=True)
out = Console()

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
HESSIANS_HELP = ("keep gptq's Hessians and the activation statistics (mse, wanda, linf) in DIR and reuse them when "
                 "model and calibration tokens match (default: a temporary dir)")



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


def add_trust_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run the Python code a hub model ships (auto_map); off by default: such models are refused")


@contextmanager
def calibration_inputs(loaded, config, calibration: str | None, hessians_dir: str | None):
    """(activation statistics, Hessians) that the config's quantizers and pruning criteria need,
    each None when nothing needs it, from the calibration set or the embedded corpus's first
    sequences. Hessians live in `hessians_dir` (reused when they match) or a temporary directory;
    with a `hessians_dir` the statistics are kept and reused there too."""
    import tempfile

    from evo.compress.plan import config_needs_hessians, config_needs_stats
    from evo.data.calibset import CalibrationSet
    from evo.data.corpus import default_stats_tokens
    from evo.evaluate.hessian import load_or_collect

    want_stats = config_needs_stats(config, loaded.info)
    want_hessians = config_needs_hessians(config, loaded.info)
    tokens = None
    if want_stats or want_hessians:
        tokens = (CalibrationSet.load(calibration).calibration.token_ids if calibration
                  else default_stats_tokens(loaded.tokenizer))
    stats = None
    if want_stats:
        stats = _activation_stats(loaded, tokens, hessians_dir)
    if not want_hessians:
        yield stats, None
        return
    with tempfile.TemporaryDirectory(prefix="evo-hessians-") as scratch:
        with step(f"collecting Hessians of the linear inputs on {len(tokens)} sequences"):
            hessians = load_or_collect(hessians_dir or scratch, loaded.model, loaded.info, tokens)
        yield stats, hessians


def _activation_stats(loaded, tokens, cache_dir: str | None):
    """The activation statistics of `loaded` on `tokens`: read from `cache_dir` when they were kept
    there from this model on these tokens, else collected (and kept there when a dir is given)."""
    from pathlib import Path

    from evo.cli.progress import ProgressDisplay
    from evo.constants import STATS_FILE
    from evo.evaluate.stats import cached_stats, collect_activation_stats, save_stats, stats_digest
    from evo.progress import STATISTICS, counter

    digest = stats_digest(loaded.info.model_id, tokens)
    path = Path(cache_dir) / STATS_FILE if cache_dir else None
    if path is not None:
        stats = cached_stats(path, digest)
        if stats is not None:
            console.print(f"activation statistics: reused from {path}")
            return stats
    with ProgressDisplay(console) as display:
        stats = collect_activation_stats(loaded.model, loaded.info, tokens,
                                         progress=counter(display.step, STATISTICS, "sequences"))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_stats(stats, path, digest=digest)
    return stats


def int_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def add_model_options(parser: argparse.ArgumentParser, device: str = "cpu") -> None:
    from evo.constants import DEFAULT_MODEL  # not evo.modelio: `evo --help` must not import torch

    parser.add_argument("--model", default=DEFAULT_MODEL, help="alias, local dir, .gguf file or hub id")
    parser.add_argument("--device", default=device, help="cpu, cuda, cuda:N or auto = CUDA when available")
    parser.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16, float16")
    add_trust_option(parser)


def positive_int(text: str, option: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise EvoError(f"{option} {text!r}: use a positive integer or 'channel'")
    return value


def render_artifact(summary) -> None:
    out.print(f"artifact {summary.path}: {summary.total_bytes:,} bytes ({summary.total_bytes / 1e6:.3f} MB) = "
              f"{summary.tensor_bytes:,} tensor bytes + {summary.metadata_bytes:,} metadata bytes")
