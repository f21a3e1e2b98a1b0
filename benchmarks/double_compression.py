"""Double Compression on SmolLM2-135M: 8-bit per-channel symmetric quantization of every decoder
linear, rescale r ∈ {1, 1.5, 2, 4} × sparsity ∈ {0, 0.2, 0.4} (l∞ criterion |W|·max|X_j|, the
paper's), entropy-coded. Prints the decoder linears' bytes against raw INT8 (1 byte per weight +
an fp16 scale per row), the whole artifact's MB, and WikiText-2 perplexity of the reloaded artifact.

    python benchmarks/double_compression.py [--max-tokens 16384] [--device cpu|cuda]

The embedding stays in bf16 in every row, so the ratios are about the decoder linears alone.
"""

from __future__ import annotations

import argparse

from _common import ArtifactBench, setup_threads

from evo.compress.settings import TensorSetting
from evo.compress.artifact import read_manifest
from evo.compress.config import KEPT, CompressionConfig
from evo.data.corpus import default_stats_tokens
from evo.modelio import load_model
from evo.evaluate.stats import collect_activation_stats

RESCALES = (1.0, 1.5, 2.0, 4.0)
SPARSITIES = (0.0, 0.2, 0.4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-tokens", type=int, default=64 * 512)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    setup_threads()
    loaded = load_model(args.model, device=args.device, dtype="float32")
    bench = ArtifactBench(loaded, args.device, args.max_tokens)
    linears = loaded.info.linears()
    raw_int8 = sum(lin.numel + 2 * lin.shape[0] for lin in linears)  # codes + fp16 scale per row
    linear_names = {lin.name for lin in linears}
    stats = collect_activation_stats(loaded.model, loaded.info, default_stats_tokens(loaded.tokenizer))
    dense = bench.dense_ppl()
    print(f"dense WikiText-2 PPL {dense:.3f} ({args.max_tokens} tokens); raw INT8 of the decoder linears "
          f"{raw_int8 / 1e6:.3f} MB")
    print(f"{'rescale':>7} {'sparsity':>8} {'linears MB':>10} {'ratio vs INT8':>13} {'artifact MB':>11} "
          f"{'PPL':>9} {'ΔPPL %':>7} {'s':>5}")
    for sparsity in SPARSITIES:
        for rescale in RESCALES:
            setting = TensorSetting(bits=8, group_size=None, symmetric=True, rescale=rescale, sparsity=sparsity,
                                    prune_criterion="linf")
            config = CompressionConfig(default=setting, embedding=KEPT)
            row = bench.run(f"r{rescale}-s{sparsity}", config, stats=stats)
            manifest = read_manifest(row["summary"].path)
            linear_bytes = sum(t.compressed_bytes for t in manifest.tensors if t.source in linear_names)
            print(f"{rescale:>7g} {sparsity:>8g} {linear_bytes / 1e6:>10.3f} {raw_int8 / linear_bytes:>13.3f} "
                  f"{row['summary'].total_bytes / 1e6:>11.3f} {row['ppl']:>9.3f} {100 * (row['ppl'] / dense - 1):>7.2f} "
                  f"{row['seconds']:>5.0f}")


if __name__ == "__main__":
    main()
