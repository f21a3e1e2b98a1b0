"""`evo calibrate`: draw a CCDS calibration set from a corpus and print its clusters."""

from __future__ import annotations

import argparse
import time

from rich.table import Table

from evo.cli.progress import ProgressDisplay
from evo.cli.ui import add_model_options, console, int_or_auto, load_model_with_progress, out, step


def add_parser(sub) -> None:
    cal = sub.add_parser("calibrate", help="draw a CCDS calibration set (cluster-covering) from a corpus")
    add_model_options(cal)
    cal.add_argument("--corpus", nargs="+", default=["calibration_mix"],
                     help="files, directories or built-in names (calibration_mix [embedded default], wikitext2, c4)")
    cal.add_argument("--text-field", default="text", help="field holding the text in .jsonl / .parquet (default text)")
    cal.add_argument("--samples", type=int, default=32, help="calibration sequences to draw (default 32)")
    cal.add_argument("--heldout", type=int, default=32, help="held-out sequences, disjoint from calibration (default 32)")
    cal.add_argument("--clusters", type=int_or_auto, default=8, help="k for KMeans, or 'auto' (silhouette) (default 8)")
    cal.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (default 512)")
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--strategy", default="ccds", choices=["ccds", "random"], help="ccds, or random for ablations")
    cal.add_argument("--within", default="spread", choices=["spread", "nearest", "random"],
                     help="which sequences of a cluster: spread (nearest to sub-cluster centroids), "
                          "nearest to the centroid, or random")
    cal.add_argument("--layer", type=int, default=None, help="decoder layer embedded (default num_layers // 4)")
    cal.add_argument("--embed-tokens", type=int, default=128, help="tokens of each sequence mean-pooled (default 128)")
    cal.add_argument("--max-candidates", type=int, default=4096, help="embed at most this many sequences (default 4096)")
    cal.add_argument("--batch-size", type=int, default=8)
    cal.add_argument("--out", default="runs/calibration.json", help="output JSON file (default runs/calibration.json)")


def run(args: argparse.Namespace) -> int:
    from evo.data.ccds import CalibrationConfig, build_calibration_set
    from evo.data.corpus import read_corpus

    config = CalibrationConfig(
        samples=args.samples,
        clusters=args.clusters,
        heldout=args.heldout,
        seq_len=args.seq_len,
        seed=args.seed,
        strategy=args.strategy,
        within_cluster=args.within,
        layer=args.layer,
        embed_tokens=args.embed_tokens,
        max_candidates=args.max_candidates,
        batch_size=args.batch_size,
    )
    with step("reading corpus"):
        corpus = read_corpus(args.corpus, text_field=args.text_field)
    loaded = load_model_with_progress(args.model, dtype=args.dtype, device=args.device,
                                      trust_remote_code=args.trust_remote_code)
    start = time.perf_counter()
    with ProgressDisplay(console) as display:
        calibration_set = build_calibration_set(loaded, corpus, config, progress=display.step)
    elapsed = time.perf_counter() - start
    path = calibration_set.save(args.out)
    render_calibration(calibration_set)
    prov = calibration_set.provenance
    out.print(
        f"{len(calibration_set.calibration)} calibration + {len(calibration_set.heldout)} held-out sequences "
        f"of {prov.seq_len} tokens from {prov.n_candidates} candidates, k={prov.n_clusters}, "
        f"ARI(cluster, source)={calibration_set.adjusted_rand_index:.3f}, "
        f"sources covered {len(set(calibration_set.calibration.sources))}/{len(prov.corpus_files)}, "
        f"{elapsed:.1f} s → {path}"
    )
    return 0


def render_calibration(calibration_set) -> None:
    table = Table(title="CCDS clusters")
    for name, justify in (("cluster", "right"), ("size", "right"), ("drawn", "right"),
                          ("dominant source", "left"), ("share", "right"), ("snippet", "left")):
        table.add_column(name, justify=justify, overflow="ellipsis", no_wrap=True,
                         max_width=40 if name == "snippet" else None)
    for c in calibration_set.clusters:
        table.add_row(str(c.cluster), str(c.size), str(c.drawn), c.dominant_source,
                      f"{c.dominant_share:.0%}", c.snippet)
    out.print(table)
