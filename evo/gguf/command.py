"""The body of `evo compress --format gguf`: parse the GGUF options, collect the imatrix, write,
render. Kept here so the CLI module only dispatches to it."""

from __future__ import annotations

import argparse

from evo.errors import EvoError


def add_gguf_options(parser: argparse.ArgumentParser) -> None:
    """The options `evo compress` takes for --format gguf."""
    parser.add_argument("--format", default="evo", choices=["evo", "gguf"],
                        help="evo artifact directory (default) or a llama.cpp GGUF file")
    parser.add_argument("--types", default=None,
                        help="gguf: a llama.cpp recipe (Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_M, Q6_K, "
                             "Q4_0, Q8_0, ...) or a TOML/JSON types file (recipe/default + [tensors] regex = type)")
    parser.add_argument("--token-embedding-type", default=None, help="gguf: type of token_embd.weight (e.g. q4_0)")
    parser.add_argument("--output-tensor-type", default=None, help="gguf: type of output.weight (untied heads)")
    parser.add_argument("--drop-layers", default=None,
                        help="gguf: comma-separated decoder layers to remove (later blocks are renumbered)")
    parser.add_argument("--no-imatrix", action="store_true",
                        help="gguf: fit without activation statistics (columns weighted equally)")


def parse_drop_layers(text: str | None) -> dict[int, str]:
    if not text:
        return {}
    try:
        return {int(part): "layer" for part in text.split(",") if part.strip()}
    except ValueError:
        raise EvoError(f"--drop-layers {text!r} must be comma-separated layer numbers, e.g. 3,7") from None


def run_compress(args: argparse.Namespace, *, load, step, out) -> int:
    """Write the GGUF file of `args.model` with `args.types`; print predicted and written bytes."""
    from evo.calibset import CalibrationSet
    from evo.export import default_stats_tokens
    from evo.gguf.export import compress_to_gguf
    from evo.gguf.imatrix import collect_importance

    if not args.types:
        raise EvoError("--format gguf needs --types: a llama.cpp recipe such as Q3_K_M, or a types file")
    if args.config:
        raise EvoError("--format gguf takes --types, not --config")
    drops = parse_drop_layers(args.drop_layers)
    loaded = load(args.model, dtype=args.dtype, device=args.device)
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
              f"({summary.written_bytes / 1e6:.3f} MB; tensors: {mix})")
    return 0
