"""`evo compress`: write the compressed artifact of a configuration file."""

from __future__ import annotations

import argparse

from evo.cli.ui import add_model_options, calibration_inputs, load_model_with_progress, render_artifact, step


def add_parser(sub) -> None:
    comp = sub.add_parser("compress", help="write the compressed artifact of a configuration (TOML or JSON)")
    add_model_options(comp)
    comp.add_argument("--config", required=True, help="compression config (.toml or .json), e.g. a run's best.toml")
    comp.add_argument("--out", required=True, help="artifact directory to write")
    comp.add_argument("--calibration", default=None,
                      help="calibration set (evo calibrate) for wanda/linf/mse statistics and gptq Hessians; "
                           "default: the embedded corpus")
    comp.add_argument("--hessians", default=None, metavar="DIR",
                      help="keep gptq's Hessians in DIR and reuse them when they match (default: a temporary dir)")
    comp.add_argument("--overwrite", action="store_true", help="replace an existing evo artifact at --out")
    comp.add_argument("--prefer-decode-speed", action="store_true",
                      help="code frames with zstd/packing only, not ANS: ~10%% larger, decodes ~15x faster "
                           "(for evo run --resident compressed/auto)")


def run(args: argparse.Namespace) -> int:
    from evo.compress.config import CompressionConfig
    from evo.compress.model import compress_and_write

    config = CompressionConfig.load(args.config)
    loaded = load_model_with_progress(args.model, dtype=args.dtype, device=args.device)
    config.validate_against(loaded.info)
    with calibration_inputs(loaded, config, args.calibration, args.hessians) as (stats, hessians):
        with step("compressing and writing the artifact"):
            summary = compress_and_write(loaded, config, args.out, stats=stats, hessians=hessians,
                                         overwrite=args.overwrite,
                                         prefer_decode_speed=args.prefer_decode_speed)
    render_artifact(summary)
    return 0
