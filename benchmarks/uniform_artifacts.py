"""Dense vs uniform RTN artifacts of SmolLM2-135M: MB on disk, whether evo's predicted size equals
the bytes on disk, and WikiText-2 perplexity of the artifact loaded back with evo.load.

    python benchmarks/uniform_artifacts.py [--max-tokens 16384] [--device cpu|cuda]

Rows: bf16 (everything kept), 8/4/3-bit g128 asymmetric integer-zero RTN on the decoder linears
(embedding 8-bit g128), and 4-bit g32 with a float zero point — the Q4_1 grid the GGUF weights were
stored on, which reproduces them. Exits 1 if any predicted size differs from the bytes on disk.
"""

from __future__ import annotations

import argparse
import sys

from _common import ArtifactBench, setup_threads

from evo.compress.settings import TensorSetting
from evo.compress.config import KEPT, CompressionConfig
from evo.modelio import load_model
from evo.compress.size import SizeCache, SizeModel

ROWS = {
    "bf16 (dense)": CompressionConfig(default=KEPT, embedding=KEPT),
    "8-bit g128": CompressionConfig(default=TensorSetting(bits=8, group_size=128), embedding=TensorSetting(bits=8)),
    "4-bit g128": CompressionConfig(default=TensorSetting(bits=4, group_size=128), embedding=TensorSetting(bits=8)),
    "3-bit g128": CompressionConfig(default=TensorSetting(bits=3, group_size=128), embedding=TensorSetting(bits=8)),
    "4-bit g32 float-min (Q4_1 grid)": CompressionConfig(
        default=TensorSetting(bits=4, group_size=32, zero_point="float"),
        embedding=TensorSetting(bits=8, group_size=32, symmetric=True)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-tokens", type=int, default=64 * 512)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    setup_threads()
    loaded = load_model(args.model, device=args.device, dtype="float32")
    bench = ArtifactBench(loaded, args.device, args.max_tokens)
    size_model = SizeModel.for_model(loaded, SizeCache(bench.workdir / "size_cache"))
    print(f"dense WikiText-2 PPL {bench.dense_ppl():.3f} ({args.max_tokens} tokens, fp32 in memory)")
    print(f"{'config':<32} {'predicted MB':>12} {'on disk MB':>10} {'equal':>5} {'PPL':>9} {'s':>5}")
    mismatches = 0
    for name, config in ROWS.items():
        predicted = size_model.artifact_bytes(config)
        row = bench.run(name.split()[0] + name.split()[1], config)
        equal = predicted == row["on_disk"] == row["summary"].total_bytes
        mismatches += not equal
        print(f"{name:<32} {predicted / 1e6:>12.6f} {row['on_disk'] / 1e6:>10.6f} {'yes' if equal else 'NO':>5} "
              f"{row['ppl']:>9.3f} {row['seconds']:>5.0f}")
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
