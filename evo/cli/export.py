"""`evo export`: the best config of a run under a budget, and its artifact, in the run's dtype."""

from __future__ import annotations

import argparse

from evo.cli.ui import add_trust_option, console, out, render_artifact


def add_parser(sub) -> None:
    ex = sub.add_parser("export", help="write the best config of a run under a budget, and its artifact")
    ex.add_argument("run_dir")
    ex.add_argument("--budget-mb", type=float, default=None, help="any budget on the run's front (default: the run's)")
    ex.add_argument("--out", required=True,
                    help="output directory: best.toml and the artifact in it (--format gguf: the .gguf file)")
    ex.add_argument("--format", default="evo", choices=["evo", "gguf"],
                    help="evo (default): evo's artifact; gguf: a llama.cpp GGUF file (runs of --space gguf)")
    ex.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ex.add_argument("--dtype", default="auto",
                    help="auto (default) = the dtype the run searched in, which its sizes and qualities hold for")
    add_trust_option(ex)
    ex.add_argument("--overwrite", action="store_true", help="replace an existing evo artifact in --out")
    ex.add_argument("--prefer-decode-speed", action="store_true",
                    help="code frames with zstd/packing only, not ANS (larger than the size the run recorded)")


def run(args: argparse.Namespace) -> int:
    from evo.search.exporting import export_run

    if args.format == "gguf":
        return run_gguf(args)

    result = export_run(args.run_dir, args.out, budget_mb=args.budget_mb, device=args.device, dtype=args.dtype,
                        trust_remote_code=args.trust_remote_code,
                        overwrite=args.overwrite, prefer_decode_speed=args.prefer_decode_speed,
                        status=lambda message: console.print(message))
    point = result.point
    if result.unchanged:
        out.print(f"{result.artifact_path} already holds this export ({point.size_bytes:,} bytes, "
                  f"{result.metric} {point.quality:.4f} recorded): nothing to do")
        return 0
    render_artifact(result.summary)
    if args.prefer_decode_speed:
        over = " (over the budget: the run chose it with the smallest coders)" if result.expected_bytes > result.budget_bytes else ""
        out.print(f"fast-decoding coders: {result.expected_bytes:,} bytes vs {point.size_bytes:,} recorded{over}")
        return 0
    out.print(f"config {result.config_path} ({result.metric} {point.quality:.4f} recorded); artifact bytes "
              f"{result.summary.total_bytes:,} <= budget {result.budget_bytes:,}")
    return 0


def run_gguf(args: argparse.Namespace) -> int:
    from evo.errors import EvoError
    from evo.search.gguf_export import export_gguf_run

    if args.prefer_decode_speed:
        raise EvoError("--prefer-decode-speed applies to evo artifacts, not --format gguf")
    result = export_gguf_run(args.run_dir, args.out, budget_mb=args.budget_mb, device=args.device, dtype=args.dtype,
                             overwrite=args.overwrite, trust_remote_code=args.trust_remote_code,
                             status=lambda message: console.print(message))
    types = ", ".join(f"{t} x{n}" for t, n in sorted(result.types.items()))
    out.print(f"{result.path}: {types}")
    out.print(f"GGUF bytes: predicted {result.predicted_bytes:,}, on disk (os.stat) {result.written_bytes:,}, "
              f"<= budget {result.budget_bytes:,} ({result.metric} {result.point.quality:.4f} recorded)")
    return 0
