"""`evo analyze`: the compressibility study (bits/weight on disk vs error for a grid of settings)."""

from __future__ import annotations

import argparse

from rich.table import Table

from evo.cli.ui import add_model_options, load_model_with_progress, out, progress_bar


def add_parser(sub) -> None:
    an = sub.add_parser("analyze", help="compressibility study: bits/weight on disk vs error for a grid of settings")
    add_model_options(an)
    an.add_argument("--out", default="runs/analyze", help="folder for analysis.csv and analysis.png")
    an.add_argument("--bits", type=int, nargs="+", default=None, help="bit-widths (default 2 3 4 8)")
    an.add_argument("--rescales", type=float, nargs="+", default=None, help="rescale factors (default 0.75 1 1.5 2)")
    an.add_argument("--sparsities", type=float, nargs="+", default=None, help="sparsities (default 0 0.25 0.5)")
    an.add_argument("--layers", type=int, default=4, help="evenly spaced decoder layers studied (default 4)")


def run(args: argparse.Namespace) -> int:
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
