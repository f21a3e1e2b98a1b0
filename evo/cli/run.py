"""`evo run`: greedy generation from an artifact, with tokens/s and the weights it keeps resident."""

from __future__ import annotations

import argparse

from evo.cli.ui import console, out, step
from evo.constants import RESIDENT_MODES


def add_parser(sub) -> None:
    run = sub.add_parser("run", help="generate text from an artifact (greedy), with tokens/s and resident memory")
    run.add_argument("artifact", help="artifact directory (evo compress / export / baseline)")
    run.add_argument("--prompt", required=True, help="text to continue")
    run.add_argument("--max-new-tokens", type=int, default=64)
    run.add_argument("--resident", default="dense", choices=RESIDENT_MODES,
                     help="weights held dequantized (dense), bit-packed (codes), as coded frames decoded on demand "
                          "(compressed) or decoded where it pays most (auto)")
    run.add_argument("--max-resident-mb", type=float, default=None,
                     help="MB cap: the decoded weights cached, bit-packed codes (compressed); all the weights "
                          "held (auto)")
    run.add_argument("--target-tokens-per-s", type=float, default=None, help="auto: pin layers until this speed")
    run.add_argument("--prefetch", type=int, default=1, help="layers decoded ahead, one background thread each")
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    run.add_argument("--dtype", default="auto", help="auto (the artifact's dtype), float32, bfloat16, float16")


def run(args: argparse.Namespace) -> int:
    from evo.compress.artifact import load
    from evo.runtime.generate import generate_greedy, limit_heap_fragmentation, report_lines

    limit_heap_fragmentation()
    with step(f"loading artifact {args.artifact} (resident {args.resident})"):
        model, tokenizer = load(args.artifact, device=args.device, dtype=None if args.dtype == "auto" else args.dtype,
                                resident=args.resident, max_resident_mb=args.max_resident_mb,
                                target_tokens_per_s=args.target_tokens_per_s, prefetch=args.prefetch)
    result = generate_greedy(model, tokenizer, args.prompt, args.max_new_tokens)
    out.print(args.prompt + result.text, highlight=False, markup=False)
    for line in report_lines(model, result):
        console.print(line, highlight=False, markup=False)
    return 0
