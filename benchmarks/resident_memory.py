"""Resident memory and speed of artifacts run in each resident mode: resident weight bytes, peak RSS,
prefill time of a long prompt and tokens/s of greedy generation.

    python benchmarks/resident_memory.py ARTIFACT [ARTIFACT ...] [--device cpu|cuda]
        [--prompt-tokens 512] [--new-tokens 128] [--caps 0 25 50 100] [--auto-cap 50] [--prefetch 1]
        [--threads N] [--json OUT]

Modes: dense, codes, compressed with its cache of decoded weights capped at each --caps percentage of
the decoded size, and auto at --auto-cap percent. The decoded size is what "compressed" holds once
every weight is decoded: the bit-packed codes of each quantized matrix (as "codes" holds them) and the
dense matrix of each bf16 one, in the load dtype. "compressed X%" holds the coded frames plus at most X %
of the decoded size; "auto X%" gets the same total (its cap counts the frames too), so the two rows
compare at equal memory.
Each (artifact, mode) runs in a fresh process so that RSS figures do not mix. The prompt is the
first --prompt-tokens tokens of WikiText-2 (test split, shared data folder); generation is greedy
with the KV cache and does not stop at EOS. Columns: weights MB (peak resident weight bytes:
tensors + coded frames + decoded weights held), RSS MB (peak during the generation; after load),
prefill s, tokens/s, and each mode's tokens/s relative to codes.

On CUDA (--device cuda) the modes of an artifact run in one process (CUDA start-up and imports
once; --in-process does the same on the CPU, where RSS figures then mix), and the table adds CUDA
weights MB (torch.cuda.memory_allocated after the load, less what was allocated before it: the
weights resident on the GPU; coded frames stay in host memory and are counted in weights MB) and
CUDA peak MB (max_memory_allocated during prefill and generation). --mode-seconds caps each mode's
decode phase (tokens/s is then over the tokens made; "compressed" decodes ANS frames on the CPU
every pass) and --deadline-s skips what would start after it, so one call fits a time budget.
"scratch MB" is the "codes" mode's reused dequantization buffer (largest matrix in the load dtype).

CPU (README's figures): --threads 1 --mode-seconds 40 (each mode's decoding capped at 40 s).
GPU: benchmarks/device_runtime.sh runs it on u3, u3 with zstd frames, the 8-bit DC artifact and int8-rtn:
    python benchmarks/resident_memory.py U3 U3Z DC8 INT8 --device cuda --dtype bfloat16 --mode-seconds 5
    --prefetch 4 --deadline-s 300
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from evo.constants import MB


def decoded_bytes(artifact: Path, dtype: str | None) -> tuple[int, int]:
    """(decoded size, coded frames) of every stored matrix: the decoded size counts a quantized matrix
    as its bit-packed codes (evo.runtime.modules.packed_nbytes, what "compressed" decodes it into) and a
    bf16 one as the dense matrix in the load dtype."""
    import torch

    from evo.compress.artifact import read_manifest
    from evo.constants import DTYPES
    from evo.runtime.modules import packed_nbytes

    manifest = read_manifest(artifact)
    size = torch.empty((), dtype=getattr(torch, DTYPES[dtype or manifest.dtype])).element_size()
    matrices = [t for t in manifest.tensors if len(t.shape) == 2]
    decoded = sum(packed_nbytes(t.shape, t.setting) if t.setting.quantized else math.prod(t.shape) * size
                  for t in matrices)
    return decoded, sum(t.compressed_bytes for t in matrices)


def run_one(args: argparse.Namespace, artifact: Path, options: dict) -> dict:
    """One (artifact, mode) in this process: load, generate, measure."""
    import gc

    import torch

    from evo.compress.artifact import load
    from evo.data.corpus import read_text
    from evo.runtime.generate import current_rss_bytes, generate_greedy
    from evo.runtime.kernels import release_scratch

    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        allocated_before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    model, tokenizer = load(artifact, device=args.device, dtype=args.dtype, **options)
    load_seconds = time.perf_counter() - start
    rss_after_load = current_rss_bytes()
    cuda_weights = torch.cuda.memory_allocated() - allocated_before if cuda else None
    ids = tokenizer(read_text("wikitext2")[:200_000], return_tensors="pt")["input_ids"][:, : args.prompt_tokens]
    warmup_seconds = None
    if args.warmup or (args.warmup is None and cuda):
        # One token through the model first: CUDA kernels load, the "codes" kernel compiles (and is
        # checked), so prefill and tokens/s are the steady state; the time is reported apart.
        tic = time.perf_counter()
        with torch.no_grad():
            model(input_ids=ids[:, :1].to(args.device), use_cache=False)
        if cuda:
            torch.cuda.synchronize()
        warmup_seconds = time.perf_counter() - tic
    result = generate_greedy(model, tokenizer, ids, args.new_tokens, stop_at_eos=False,
                             max_decode_seconds=args.mode_seconds)
    runtime = getattr(model, "evo_runtime", None)
    store = runtime.store.stats() if runtime is not None and runtime.store is not None else None
    record = {
        "load_s": load_seconds,
        "warmup_s": warmup_seconds,
        "rss_after_load": rss_after_load,
        "peak_rss": result.peak_rss_bytes,
        "weights": result.peak_weight_bytes,
        "frames": result.weight_memory.frame_bytes,
        "prefill_s": result.prefill_seconds,
        "tokens_per_s": result.tokens_per_s,
        "peak_cuda": None if result.peak_cuda_bytes is None else result.peak_cuda_bytes - allocated_before,
        "cuda_weights": cuda_weights,
        "scratch": result.weight_memory.scratch_bytes,
        "tokens": list(result.token_ids),
        "misses": store.misses if store else None,
        "prefetched": store.prefetched if store else None,
        "plan": runtime.plan.summary() if runtime is not None and runtime.plan is not None else None,
    }
    if runtime is not None and runtime.store is not None:
        runtime.store.close()
    del model, runtime, result
    release_scratch()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return record


def setup_process(args: argparse.Namespace) -> None:
    import torch

    from evo.runtime.generate import limit_heap_fragmentation

    if not args.keep_malloc:
        limit_heap_fragmentation()
    if args.threads:
        torch.set_num_threads(args.threads)


def modes(args: argparse.Namespace, artifact: Path) -> list[tuple[str, dict]]:
    decoded, frames = decoded_bytes(artifact, args.dtype)
    rows = [("dense", {"resident": "dense"}), ("codes", {"resident": "codes"})]
    rows = [row for row in rows if row[0] in args.modes]
    for cap in args.caps if "compressed" in args.modes else []:
        rows.append((f"compressed {cap:g}%", {"resident": "compressed", "max_resident_mb": decoded * cap / 100 / MB,
                                               "prefetch": args.prefetch}))
    if "auto" in args.modes:
        rows.append((f"auto {args.auto_cap:g}%", {"resident": "auto",
                                                  "max_resident_mb": (frames + decoded * args.auto_cap / 100) / MB,
                                                  "prefetch": args.prefetch}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="load dtype (default the artifact's)")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--modes", nargs="+", default=["dense", "codes", "compressed", "auto"],
                        choices=["dense", "codes", "compressed", "auto"])
    parser.add_argument("--caps", type=float, nargs="+", default=[0, 25, 50, 100])
    parser.add_argument("--auto-cap", type=float, default=50)
    parser.add_argument("--prefetch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    parser.add_argument("--keep-malloc", action="store_true",
                        help="leave glibc's mmap threshold dynamic (default: fixed at 64 KiB, see limit_heap_fragmentation)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                        help="one 1-token forward before timing (default: on CUDA only)")
    parser.add_argument("--in-process", action="store_true",
                        help="run every mode in this process (default on CUDA; RSS figures then mix)")
    parser.add_argument("--mode-seconds", type=float, default=None,
                        help="stop each mode's generation after this many seconds of decoding")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="skip the (artifact, mode) runs that would start after this many seconds")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: JSON load options
    args = parser.parse_args()
    if args.one is not None:
        setup_process(args)
        print(json.dumps(run_one(args, args.artifacts[0], json.loads(args.one))))
        return
    in_process = args.in_process or args.device.startswith("cuda")
    if in_process:
        setup_process(args)
    began = time.perf_counter()
    records = []
    for artifact in args.artifacts:
        decoded, frames = decoded_bytes(artifact, args.dtype)
        print(f"\n{artifact}: decoded size {decoded / MB:.1f} MB (codes; bf16 matrices dense), coded frames "
              f"{frames / MB:.1f} MB; prefetch {args.prefetch}; prompt {args.prompt_tokens} tokens, "
              f"{args.new_tokens} new tokens, device {args.device}", flush=True)
        cuda_columns = f" {'CUDA MB':>8} {'CUDA peak':>9}" if args.device.startswith("cuda") else ""
        print(f"{'mode':<16} {'weights MB':>10}{cuda_columns} {'peak RSS MB':>11} {'RSS load MB':>11} {'scratch MB':>10} "
              f"{'prefill s':>9} {'tokens/s':>9} {'tokens':>6} {'vs codes':>8} {'load s':>7}  same tokens", flush=True)
        reference = codes_speed = None
        for name, options in modes(args, artifact):
            if args.deadline_s is not None and time.perf_counter() - began > args.deadline_s:
                print(f"{name:<16} skipped: past --deadline-s {args.deadline_s:g}", flush=True)
                continue
            if in_process:
                try:
                    row = run_one(args, artifact, options)
                except Exception as error:  # noqa: BLE001 - one failed mode must not hide the others' figures
                    print(f"{name:<16} failed: {error!r}", flush=True)
                    continue
            else:
                command = [sys.executable, __file__, str(artifact), "--device", args.device, "--prompt-tokens",
                           str(args.prompt_tokens), "--new-tokens", str(args.new_tokens), "--one", json.dumps(options)]
                if args.dtype:
                    command += ["--dtype", args.dtype]
                if args.threads:
                    command += ["--threads", str(args.threads)]
                if args.keep_malloc:
                    command += ["--keep-malloc"]
                if args.mode_seconds is not None:
                    command += ["--mode-seconds", str(args.mode_seconds)]
                if args.warmup is not None:
                    command += ["--warmup" if args.warmup else "--no-warmup"]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"{name:<16} failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
            # Modes cut by --mode-seconds made fewer tokens: compare the tokens both made.
            reference = row["tokens"] if reference is None or len(row["tokens"]) > len(reference) else reference
            common = min(len(reference), len(row["tokens"]))
            same = row["tokens"][:common] == reference[:common]
            if name == "codes":
                codes_speed = row["tokens_per_s"]
            ratio = row["tokens_per_s"] / codes_speed if codes_speed else float("nan")
            cuda = (f" {row['cuda_weights'] / MB:>8.1f} {row['peak_cuda'] / MB:>9.1f}"
                    if row["cuda_weights"] is not None else "")
            print(f"{name:<16} {row['weights'] / MB:>10.1f}{cuda} {row['peak_rss'] / MB:>11.1f} "
                  f"{row['rss_after_load'] / MB:>11.1f} {row['scratch'] / MB:>10.1f} {row['prefill_s']:>9.2f} "
                  f"{row['tokens_per_s']:>9.3f} {len(row['tokens']):>6} {ratio:>8.2f} {row['load_s']:>7.1f}  {same}",
                  flush=True)
            if row.get("warmup_s") is not None:
                print(f"    warm-up forward (1 token, not timed above) {row['warmup_s']:.2f} s", flush=True)
            if row["plan"]:
                print(f"    {row['plan']}", flush=True)
            records.append({"artifact": str(artifact), "mode": name, "options": options, **row})
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
