"""CCDS vs random calibration draws on the six-domain calibration mix (c4, code, multilingual,
technical, tiny stories, wiki): how well clusters match domains, and how many domains a draw covers.

    python benchmarks/ccds_coverage.py [--model smollm2-135m] [--clusters 6] [--samples 32] [--seeds 10]

Embeds every 512-token sequence once with the model (evo's CCDS embedding), then for each seed
draws with CCDS (spread / nearest / random inside clusters) and with the random strategy, and
prints the adjusted Rand index between clusters and source files and the domains covered.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from evo.data.ccds import CalibrationConfig, CCDSSampler, embed_sequences
from evo.data.corpus import read_corpus, tokenize_corpus
from evo.modelio import find_decoder_layers, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--corpus", default="calibration_mix")
    parser.add_argument("--clusters", type=int, default=6)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(2)

    defaults = CalibrationConfig()
    tic = time.perf_counter()
    loaded = load_model(args.model, device=args.device)
    load_seconds = time.perf_counter() - tic
    pool = tokenize_corpus(read_corpus([args.corpus]), loaded.tokenizer, args.seq_len)
    _, layers = find_decoder_layers(loaded.model)
    tic = time.perf_counter()
    embeddings = embed_sequences(loaded.model, layers, pool.token_ids[:, : defaults.embed_tokens],
                                 layer=len(layers) // 4, batch_size=16)
    embed_seconds = time.perf_counter() - tic
    sources = np.asarray(pool.sources)
    domains = len(set(pool.sources))
    print(f"model {args.model}: loaded in {load_seconds:.1f} s; {len(pool)} sequences of {args.seq_len} tokens "
          f"from {domains} sources embedded in {embed_seconds:.1f} s (layer {len(layers) // 4}, "
          f"first {defaults.embed_tokens} tokens)")
    print("share of each source in the pool: "
          + ", ".join(f"{s} {np.mean(sources == s):.1%}" for s in sorted(set(pool.sources))))

    variants = {
        "ccds spread": dict(within_cluster="spread"),
        "ccds nearest": dict(within_cluster="nearest"),
        "ccds random-in-cluster": dict(within_cluster="random"),
        "random": dict(strategy="random"),
    }
    covered = {name: [] for name in variants}
    aris = []
    for seed in range(args.seeds):
        for name, options in variants.items():
            sampler = CCDSSampler(args.samples, args.clusters, 0, random_state=seed, **options).fit(embeddings)
            chosen = sampler.sample().calibration
            covered[name].append(len(set(sources[chosen])))
            if name == "ccds spread":
                aris.append(adjusted_rand_score(sources, sampler.labels_))
    print(f"\nadjusted Rand index (clusters vs source files), k={args.clusters}: "
          f"{np.mean(aris):.3f} ± {np.std(aris):.3f} over {args.seeds} seeds")
    print(f"\ndomains covered by a {args.samples}-sample draw (of {domains}), {args.seeds} seeds:")
    print(f"{'strategy':<24} {'mean':>6} {'min':>4} {'all covered':>12}")
    for name, values in covered.items():
        values = np.asarray(values)
        print(f"{name:<24} {values.mean():>6.2f} {values.min():>4d} {np.mean(values == domains):>11.0%}")


if __name__ == "__main__":
    main()
