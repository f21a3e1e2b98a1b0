"""`evo export`: the best config of a run under a budget, and its artifact, in the run's dtype."""

from __future__ import annotations

import argparse

from evo.cli.ui import add_trust_option, console, out, render_artifact, step
from evo.errors import EvoError


def add_parser(sub) -> None:
    ex = sub.add_parser("export", help="write the best config of a run under a budget, and its artifact")
    ex.add_argument("run_dir")
    ex.add_argument("--budget-mb", type=float, default=None, help="any budget on the run's front (default: the run's)")
    ex.add_argument("--out", required=True, help="output directory: best.toml and the artifact in it")
    ex.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ex.add_argument("--dtype", default="auto",
                    help="auto (default) = the dtype the run searched in, which its sizes and qualities hold for")
    add_trust_option(ex)
    ex.add_argument("--overwrite", action="store_true", help="replace an existing evo artifact in --out")
    ex.add_argument("--prefer-decode-speed", action="store_true",
                    help="code frames with zstd/packing only, not ANS (larger than the size the run recorded)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from evo.compress.config import CompressionConfig
    from evo.compress.model import compress_and_write
    from evo.constants import EXPORT_ARTIFACT_DIR, EXPORT_CONFIG_FILE, MB
    from evo.search.loop import open_session, run_spec

    run_dir = Path(args.run_dir)
    budget = int(round(args.budget_mb * MB)) if args.budget_mb is not None else None
    store, spec = run_spec(run_dir, dtype=args.dtype)  # fails before loading anything
    point, budget = store.choose(budget)
    session = open_session(spec, run_dir, resume=True, device=args.device,
                           trust_remote_code=args.trust_remote_code, status=lambda message: console.print(message))
    config = CompressionConfig.from_dict(point.config)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / EXPORT_CONFIG_FILE
    config.save(config_path)
    with step(f"compressing and writing the artifact ({session.spec.dtype})"):
        summary = compress_and_write(session.loaded, config, out_dir / EXPORT_ARTIFACT_DIR,
                                     stats=session.activation_stats, size_cache=session.size_model.size_cache,
                                     overwrite=args.overwrite, prefer_decode_speed=args.prefer_decode_speed)
    render_artifact(summary)
    if args.prefer_decode_speed:
        from evo.runtime.sizes import decode_speed_size

        expected = decode_speed_size(session.size_model, config)
        if summary.total_bytes != expected:
            raise EvoError(f"the artifact has {summary.total_bytes} bytes but the size model predicts {expected} "
                           "with fast-decoding coders: the size cache is stale; delete the run's size_cache and "
                           "export again")
        over = " (over the budget: the run chose it with the smallest coders)" if expected > budget else ""
        out.print(f"fast-decoding coders: {expected:,} bytes vs {point.size_bytes:,} recorded{over}")
        return 0
    if summary.total_bytes != point.size_bytes:
        raise EvoError(f"the artifact has {summary.total_bytes} bytes but the run recorded {point.size_bytes}: "
                       "the size cache is stale; delete the run's size_cache and export again")
    out.print(f"config {config_path} ({spec.fitness} {point.quality:.4f} recorded); artifact bytes "
              f"{summary.total_bytes:,} <= budget {budget:,}")
    return 0
