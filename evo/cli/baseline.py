"""`evo baseline uniform|shortgpt`: the artifact of a baseline (uniform RTN, ShortGPT layer removal)."""

from __future__ import annotations

import argparse

from evo.cli.ui import (
    HESSIANS_HELP,
    add_model_options,
    calibration_inputs,
    load_model_with_progress,
    out,
    positive_int,
    render_artifact,
    step,
)
from evo.errors import EvoError


def add_parser(sub) -> None:
    bl = sub.add_parser("baseline", help="write the artifact of a baseline: uniform RTN or ShortGPT layer removal")
    bls = bl.add_subparsers(dest="baseline", required=True, metavar="{uniform,shortgpt}")
    uni = bls.add_parser("uniform", help="every decoder linear at --bits (asymmetric, int zero points)")
    uni.add_argument("--bits", type=int, required=True, help="2, 3, 4, 5, 6, 8 (16 keeps bf16)")
    uni.add_argument("--quantizer", default="rtn", help="rtn (default), mse or gptq for the decoder linears")
    uni.add_argument("--calibration", default=None,
                     help="calibration set (evo calibrate) for mse statistics / gptq Hessians (default: embedded corpus)")
    uni.add_argument("--hessians", default=None, metavar="DIR", help=HESSIANS_HELP)
    uni.add_argument("--group-size", default="128", help="inputs per scale: 32, 64, 128 or channel (default 128)")
    uni.add_argument("--embedding-bits", type=int, default=8, help="token embedding / tied head bits (default 8)")
    sg = bls.add_parser("shortgpt", help="drop the --drop layers of lowest block influence (ShortGPT), rest bf16")
    sg.add_argument("--drop", type=int, required=True, help="how many decoder layers to remove")
    sg.add_argument("--calibration", default=None,
                    help="CalibrationSet JSON (evo calibrate) for block influence (default: the embedded corpus)")
    for baseline in (uni, sg):
        add_model_options(baseline)
        baseline.add_argument("--out", required=True, help="artifact directory to write (config beside it as OUT.toml)")
        baseline.add_argument("--overwrite", action="store_true", help="replace an existing evo artifact at --out")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from evo.compress.model import compress_and_write

    make_config = BASELINES[args.baseline](args)  # option errors surface before the model loads
    loaded = load_model_with_progress(args.model, dtype=args.dtype, device=args.device,
                                      trust_remote_code=args.trust_remote_code)
    config = make_config(loaded)
    with calibration_inputs(loaded, config, getattr(args, "calibration", None), getattr(args, "hessians", None)) as (
        stats, hessians,
    ):
        with step("compressing and writing the artifact"):
            summary = compress_and_write(loaded, config, args.out, stats=stats, hessians=hessians,
                                         overwrite=args.overwrite)
    config_path = Path(str(Path(args.out)).rstrip("/") + ".toml")
    config.save(config_path)
    render_artifact(summary)
    out.print(f"config {config_path}; evaluate with `evo eval {args.out}`")
    return 0


def _uniform_baseline(args: argparse.Namespace):
    from evo.baselines import uniform_config

    group = None if args.group_size == "channel" else positive_int(args.group_size, "--group-size")
    config = uniform_config(args.bits, group_size=group, embedding_bits=args.embedding_bits, quantizer=args.quantizer)
    return lambda loaded: config


def _shortgpt_baseline(args: argparse.Namespace):
    from evo.baselines import block_influence, shortgpt_config
    from evo.data.calibset import CalibrationSet
    from evo.data.corpus import default_stats_tokens

    if args.drop < 1:
        raise EvoError(f"--drop {args.drop}: drop at least one layer")
    calibration = CalibrationSet.load(args.calibration) if args.calibration else None

    def make(loaded):
        if args.drop >= loaded.info.num_layers:
            raise EvoError(f"--drop {args.drop}: the model has {loaded.info.num_layers} decoder layers; "
                           f"drop between 1 and {loaded.info.num_layers - 1}")
        tokens = calibration.calibration.token_ids if calibration else default_stats_tokens(loaded.tokenizer)
        with step(f"block influence of {loaded.info.num_layers} layers on {len(tokens)} sequences"):
            influence = block_influence(loaded.model, loaded.info, tokens)
        config = shortgpt_config(influence, args.drop)
        out.print("dropping layers " + ", ".join(f"{i} (BI {influence[i]:.4f})" for i in sorted(config.drops)))
        return config

    return make


BASELINES = {"uniform": _uniform_baseline, "shortgpt": _shortgpt_baseline}
