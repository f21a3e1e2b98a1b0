"""`evo compress`: write the compressed artifact of a configuration file, or (--format gguf) a
llama.cpp GGUF file with a type per tensor."""

from __future__ import annotations

import argparse

from evo.cli.ui import (HESSIANS_HELP, add_model_options, calibration_inputs, load_model_with_progress, out,
                        render_artifact, step)
from evo.constants import MB
from evo.errors import EvoError


def add_parser(sub) -> None:
    comp = sub.add_parser("compress", help="write the compressed artifact of a configuration (TOML or JSON)")
    add_model_options(comp)
    comp.add_argument("--config", default=None, help="compression config (.toml or .json), e.g. a run's best.toml")
    comp.add_argument("--out", required=True, help="artifact directory to write (a .gguf file with --format gguf)")
    comp.add_argument("--calibration", default=None,
                      help="calibration set (evo calibrate) for wanda/linf/mse statistics and gptq Hessians "
                           "(gguf: the imatrix); default: the embedded corpus")
    comp.add_argument("--hessians", default=None, metavar="DIR", help=HESSIANS_HELP)
    comp.add_argument("--overwrite", action="store_true", help="replace an existing evo artifact at --out")
    comp.add_argument("--prefer-decode-speed", action="store_true",
                      help="code frames with zstd/packing only, not ANS: ~10%% larger, decodes ~15x faster "
                           "(for evo run --resident compressed/auto)")
    comp.add_argument("--format", default="evo", choices=["evo", "gguf"],
                      help="evo artifact directory (default) or a llama.cpp GGUF file")
    comp.add_argument("--types", default=None,
                      help="gguf: a llama.cpp recipe (Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_M, Q6_K, "
                           "Q4_0, Q8_0, ...) or a TOML/JSON types file (recipe/default + [tensors] regex = type)")
    comp.add_argument("--token-embedding-type", default=None, help="gguf: type of token_embd.weight (e.g. q4_0)")
    comp.add_argument("--output-tensor-type", default=None, help="gguf: type of output.weight (untied heads)")
    comp.add_argument("--drop-layers", default=None,
                      help="gguf: comma-separated decoder layers to remove (later blocks are renumbered)")
    comp.add_argument("--no-imatrix", action="store_true",
                      help="gguf: fit without activation statistics (columns weighted equally)")


def run(args: argparse.Namespace) -> int:
    if args.format == "gguf":
        return run_gguf(args)
    if not args.config or args.types:
        raise EvoError("evo compress needs --config (or --format gguf --types RECIPE)")

    from evo.compress.config import CompressionConfig
    from evo.compress.model import compress_and_write

    config = CompressionConfig.load(args.config)
    loaded = load_model_with_progress(args.model, dtype=args.dtype, device=args.device,
                                      trust_remote_code=args.trust_remote_code)
    config.validate_against(loaded.info)
    with calibration_inputs(loaded, config, args.calibration, args.hessians) as (stats, hessians):
        with step("compressing and writing the artifact"):
            summary = compress_and_write(loaded, config, args.out, stats=stats, hessians=hessians,
                                         overwrite=args.overwrite,
                                         prefer_decode_speed=args.prefer_decode_speed)
    render_artifact(summary)
    return 0


def parse_drop_layers(text: str | None) -> dict[int, str]:
    if not text:
        return {}
    try:
        return {int(part): "layer" for part in text.split(",") if part.strip()}
    except ValueError:
        raise EvoError(f"--drop-layers {text!r} must be comma-separated layer numbers, e.g. 3,7") from None


def run_gguf(args: argparse.Namespace) -> int:
    """Write the GGUF file of `args.model` with `args.types`; print predicted and written bytes."""
    from evo.data.calibset import CalibrationSet
    from evo.data.corpus import default_stats_tokens
    from evo.gguf.export import compress_to_gguf
    from evo.gguf.imatrix import collect_importance

    if not args.types:
        raise EvoError("--format gguf needs --types: a llama.cpp recipe such as Q3_K_M, or a types file")
    if args.config:
        raise EvoError("--format gguf takes --types, not --config")
    drops = parse_drop_layers(args.drop_layers)
    loaded = load_model_with_progress(args.model, dtype=args.dtype, device=args.device)
    importance = None
    if not args.no_imatrix:
        tokens = (CalibrationSet.load(args.calibration).calibration.token_ids if args.calibration
                  else default_stats_tokens(loaded.tokenizer))
        with step(f"collecting the importance matrix on {len(tokens)} sequences"):
            importance = collect_importance(loaded, tokens)
    with step("quantizing and writing the GGUF file"):
        summary = compress_to_gguf(loaded, args.types, args.out, drops=drops, importance=importance,
                                   token_embedding_type=args.token_embedding_type,
                                   output_tensor_type=args.output_tensor_type, overwrite=args.overwrite)
    mix = ", ".join(f"{count} {qtype}" for qtype, count in sorted(summary.types.items()))
    out.print(f"GGUF {summary.path}: {summary.written_bytes:,} bytes on disk = {summary.predicted_bytes:,} predicted "
              f"({summary.written_bytes / MB:.3f} MB; tensors: {mix})")
    return 0
