"""The `evo` command line: one module per command, each a thin `add_parser(sub)` + `run(args)` that
parses, calls the library and renders with rich (evo.cli.ui).

Every user error is an EvoError, printed on one line by `main`, exit code 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from evo import __version__
from evo.cli import analyze, baseline, calibrate, compress, eval, export, inspect, report, run, search
from evo.cli.helpfmt import apply_everywhere
from evo.cli.ui import EXIT_INTERRUPTED, EXIT_USER_ERROR, console
from evo.errors import EvoError

# In the order `evo --help` lists them.
COMMANDS = {"calibrate": calibrate, "compress": compress, "eval": eval, "analyze": analyze, "search": search,
            "report": report, "baseline": baseline, "run": run, "export": export, "inspect": inspect}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evo", description="Compress a causal LM to fit a memory budget.")
    parser.add_argument("--version", action="version", version=f"evo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return apply_everywhere(parser)  # every option's help states its default


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        if args.command == "search":  # a resume takes the run's own settings for options not given
            args.given_options = search.given_options(build_parser(), argv)
        return COMMANDS[args.command].run(args)
    except EvoError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        console.print("interrupted")
        return EXIT_INTERRUPTED
