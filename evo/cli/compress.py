"""`evo compress`: write the compressed artifact of a configuration file."""

from __future__ import annotations

import argparse

from evo.cli.ui import add_model_options, load_model_with_progress, render_artifact, step


def add_parser(sub) -> None:
    comp = sub.add_parser("compress", help="write the compressed artifact of a configuration (TOML or JSON)")
    add_model_options(comp)
    comp.add_argument("--config", required=True, help="compression config (.toml or .json), e.g. a run's best.toml")
    comp.add_argument("--out", required=True, help="artifact directory to write")
    comp.add_argument("--calibration", default=None,
                      help="calibration set (evo calibrate) for wanda/linf pruning statistics; default: the embedded corpus")
    comp.add_argument("--overwrite", action="store_true", help="replace an existing evo artifact at --out")
    comp.add_argument("--prefer-decode-speed", action="store_true",
                      help="code frames with zstd/packing only, not ANS: ~10%% larger, decodes ~15x faster "
                           "(for evo run --resident compressed/auto)")


def run(args: argparse.Namespace) -> int:
    from evo.compress.config import CompressionConfig
    from evo.compress.model import compress_and_write
    from evo.compress.plan import config_needs_stats
    from evo.data.calibset import CalibrationSet
    from evo.data.corpus import default_stats_tokens
    from evo.evaluate.stats import collect_activation_stats

    config = CompressionConfig.load(args.config)
    loaded = load_model_with_progress(args.model, dtype=args.dtype, device=args.device,
                                      trust_remote_code=args.trust_remote_code)
    config.validate_against(loaded.info)
    stats = None
    if config_needs_stats(config, loaded.info):
        tokens = (CalibrationSet.load(args.calibration).calibration.token_ids if args.calibration
                  else default_stats_tokens(loaded.tokenizer))
        with step(f"collecting activation statistics on {len(tokens)} sequences"):
            stats = collect_activation_stats(loaded.model, loaded.info, tokens)
    with step("compressing and writing the artifact"):
        summary = compress_and_write(loaded, config, args.out, stats=stats, overwrite=args.overwrite,
                                     prefer_decode_speed=args.prefer_decode_speed)
    render_artifact(summary)
    return 0
