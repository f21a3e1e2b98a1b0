"""`evo report`: a run's Pareto front (table, PNG), convergence curve and evaluations CSV."""

from __future__ import annotations

import argparse

from rich.table import Table

from evo.cli.ui import out


def add_parser(sub) -> None:
    rep = sub.add_parser("report", help="a run's Pareto front (table, PNG), convergence curve and evaluations CSV")
    rep.add_argument("run_dir")
    rep.add_argument("--out", default=None, help="folder for the report (default RUN_DIR/report)")
    rep.add_argument("--baseline", action="append", default=[], metavar="NAME=MB:QUALITY",
                     help="a reference point on the plot: NAME=MB:QUALITY or NAME=ARTIFACT_DIR:QUALITY (repeatable)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from evo.report import Baseline, build_report, write_report

    baselines = tuple(Baseline.parse(text) for text in args.baseline)
    report = build_report(args.run_dir)
    paths = write_report(report, Path(args.out) if args.out else Path(args.run_dir) / "report", baselines)
    table = Table(title=f"Pareto front of {args.run_dir} under {report.budget_bytes / 1e6:.3f} MB "
                        f"({report.metric}: {report.metric_label}, lower is better)")
    for name in ("MB", report.metric, "evaluation #", "chosen"):
        table.add_column(name, justify="right")
    for entry in report.front:
        table.add_row(f"{entry.size_bytes / 1e6:.3f}", f"{entry.quality:.4f}", str(entry.index),
                      "*" if entry is report.chosen else "")
    out.print(table)
    for u in report.uniform:
        quality = f"{report.metric} {u.quality:.4f}" if u.quality is not None else "not evaluated by this run"
        out.print(f"uniform {u.bits}-bit: {u.size_bytes / 1e6:.3f} MB, {quality}", highlight=False)
    summary = report.summary()
    out.print(f"{summary['evaluations']} evaluations ({summary['final_stage_evaluations']} at the final stage), "
              f"{summary['evaluation_seconds']:.0f} s evaluating, engine {report.engine}")
    for kind, path in paths.items():
        out.print(f"{kind}: {path}", soft_wrap=True, highlight=False)
    return 0
