"""Decode speed of each code coder (ANS via constriction, zstd, bit-packed zstd, plain packing) on the
codes of real artifacts, single- and multi-threaded: is decoding the bottleneck of running compressed?

    python benchmarks/decode_speed.py ARTIFACT [ARTIFACT ...] [--threads 1 2] [--repeats 3] [--max-tensors N]

Every quantized tensor's codes are decoded from the artifact, then encoded with every coder of
evo.compress.coding.CODE_CODERS (the frame the writer would pick is marked), and each coder's frames are
decoded `--repeats` times; the best time counts. Threads decode different tensors at once (the
runtime's prefetch decodes one tensor per thread). Figures: frame MB, decoded Mweights/s, MB/s of
frames read, and the weights' share of the fastest coder's size. Also times sha256 (checked before
every decode) and dequantization, and the whole lazy decode of resident="compressed" on the artifact's
own frames (sha256, decode, bit-packing into the codes a PackedWeight holds) per --threads.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from evo.compress import coding, dequantize
from evo.compress.artifact import decode_stored_tensor, read_manifest, stored_frames
from evo.constants import TENSORS_FILE
from evo.runtime.modules import PackedWeight


def artifact_codes(path: Path, max_tensors: int | None):
    """(name, bits, uint8 codes, coder the writer chose) of every quantized tensor."""
    manifest = read_manifest(path)
    blob = (path / TENSORS_FILE).read_bytes()
    rows = []
    for tensor in manifest.tensors:
        if not tensor.setting.quantized:
            continue
        quantized = decode_stored_tensor(path, tensor, stored_frames(tensor, blob))
        chosen = next(f.coder for f in tensor.frames if f.kind == "codes")
        rows.append((tensor.name, tensor.setting.bits, quantized.codes.numpy().reshape(-1), chosen, quantized))
        if max_tensors is not None and len(rows) >= max_tensors:
            break
    return rows, blob, manifest


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def decode_all(frames: list[bytes], threads: int) -> None:
    if threads == 1:
        for frame in frames:
            coding.decode(frame)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(coding.decode, frames))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tensors", type=int, default=None, help="only the first N quantized tensors")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for path in args.artifacts:
        rows, blob, manifest = artifact_codes(path, args.max_tensors)
        weights = sum(codes.size for _, _, codes, _, _ in rows)
        chosen = {}
        for _, _, _, coder, _ in rows:
            chosen[coder] = chosen.get(coder, 0) + 1
        print(f"\n{path}: {len(rows)} quantized tensors, {weights / 1e6:.1f} M weights, "
              f"writer's coders {dict(sorted(chosen.items()))}")
        print(f"{'coder':<12} {'threads':>7} {'frames MB':>10} {'bits/w':>7} {'Mweights/s':>11} {'frame MB/s':>11} "
              f"{'ms/forward':>11}")
        per_coder = {name: [coding.encode_codes(codes, bits, name) for _, bits, codes, _, _ in rows]
                     for name in coding.CODE_CODERS}
        for name, frames in per_coder.items():
            size = sum(len(f) for f in frames)
            for threads in args.threads:
                seconds = best_time(lambda: decode_all(frames, threads), args.repeats)
                print(f"{name:<12} {threads:>7} {size / 1e6:>10.2f} {8 * size / weights:>7.3f} "
                      f"{weights / seconds / 1e6:>11.1f} {size / seconds / 1e6:>11.1f} {seconds * 1e3:>11.1f}")
        checked = [blob[f.offset: f.offset + f.length] for t in manifest.tensors for f in t.frames]
        sha = best_time(lambda: [hashlib.sha256(f).digest() for f in checked], args.repeats)
        deq = best_time(lambda: [dequantize(q).to(torch.float32) for *_, q in rows], args.repeats)
        stored = [(t, stored_frames(t, blob)) for t in manifest.tensors if t.setting.quantized]
        stored = stored[: len(rows)]

        def to_codes(item):
            return PackedWeight(decode_stored_tensor(path, *item), torch.float32)

        for threads in args.threads:
            def run():
                if threads == 1:
                    return [to_codes(item) for item in stored]
                with ThreadPoolExecutor(max_workers=threads) as pool:
                    return list(pool.map(to_codes, stored))

            seconds = best_time(run, args.repeats)
            print(f"runtime decode into packed codes (the artifact's coders), {threads} threads: "
                  f"{weights / seconds / 1e6:.1f} Mweights/s ({seconds * 1e3:.1f} ms for all)")
        print(f"sha256 of all {len(checked)} frames: {sum(map(len, checked)) / sha / 1e6:.0f} MB/s ({sha * 1e3:.1f} ms); "
              f"dequantize to fp32: {weights / deq / 1e6:.1f} Mweights/s ({deq * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
