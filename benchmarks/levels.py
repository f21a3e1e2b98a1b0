"""The level database: how long quantizing every (tensor, setting) of a space takes at run start, per
quantizer (rtn / mse / gptq, gptq batched per layer input), and what materialising a genome costs in the
evaluator before (levels compressed on first use into a cache) and after (levels precomputed: a pointer
swap or a copy).

    # precompute time of the default space on this CPU, first 2 decoder layers (extrapolated to all)
    nice -n 10 python benchmarks/levels.py --model smollm2-135m --space default --quantizers rtn,mse,gptq \
        --layers 2 --materialise 0
    # materialise ms per evaluation before/after, every level of the bits space, real model on the CPU
    nice -n 10 python benchmarks/levels.py --model smollm2-135m --space bits --quantizers rtn --materialise 20
    # the same on a tiny random model (tests/tiny.py)
    python benchmarks/levels.py --model tiny --space default --quantizers rtn,gptq --materialise 20
    # the GPU figures
    python benchmarks/levels.py --model smollm2-135m --device cuda --space default --quantizers rtn,mse,gptq \
        --materialise 50

Prints one line per measurement and a JSON summary (--out FILE to keep it).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evo.compress.size import SizeCache, SizeModel  # noqa: E402
from evo.evaluate.evaluator import Evaluator, FitnessConfig  # noqa: E402
from evo.evaluate.hessian import collect_hessians  # noqa: E402
from evo.evaluate.stats import collect_activation_stats  # noqa: E402
from evo.search.levels import LevelStore  # noqa: E402
from evo.search.size_table import SizeTable  # noqa: E402
from evo.search.space import SearchSpace  # noqa: E402
from kernel_profile import sync as _sync  # noqa: E402


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the entropy-coding workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime



def load(model: str, device: str, workdir: Path):
    from evo.modelio import load_model

    if model == "tiny":
        from tests.tiny import save_tiny_model

        model = str(save_tiny_model(workdir / "tiny"))
    return load_model(model, device=device)


def calibration_tokens(loaded, samples: int, seq_len: int) -> np.ndarray:
    from evo.data.corpus import read_text
    from evo.evaluate.perplexity import tokenize_for_eval

    try:
        ids = tokenize_for_eval(loaded.tokenizer, read_text("calibration_mix_heldout"))
    except Exception:  # a tiny model's tokenizer: any ids of its vocabulary time the same
        ids = np.random.default_rng(0).integers(0, loaded.info.vocab_size, samples * seq_len)
    ids = ids[: samples * seq_len] % loaded.info.vocab_size
    return np.asarray(ids, dtype=np.int64).reshape(samples, seq_len)


def limited_table(space, loaded, size_model, layers: int | None, part: str = "decoder") -> SizeTable:
    """The space's size table; with `layers`, the pairs of its first `layers` decoder layers only
    (part "decoder") or of the embedding/head only (part "other")."""
    table = SizeTable(space, loaded.info, size_model)
    if layers is not None:
        keep = {name for layer in loaded.info.layers[:layers] for name, _ in
                [(lin.name, None) for lin in layer.linears] + list(layer.other_tensors)}
        if part == "other":
            keep = {t.name for t in loaded.info.non_decoder}
        pairs = [pair for pair in table.pairs() if pair[0] in keep]
        table.pairs = lambda: pairs  # type: ignore[method-assign]
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help='an evo model, or "tiny" (tests/tiny.py)')
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--space", default="default")
    parser.add_argument("--quantizers", default="rtn,mse,gptq")
    parser.add_argument("--layers", default="all", help="precompute the first N decoder layers only (and "
                        "extrapolate), or all")
    parser.add_argument("--workers", type=int, default=None, help="entropy-coding processes (default: all cores)")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--materialise", type=int, default=20, help="random genomes to materialise before/after "
                        "(rtn; needs every layer: --layers all); 0 skips it")
    parser.add_argument("--check", type=int, default=8, help="gptq levels compared bit for bit with the "
                        "per-tensor gptq of evo compress/export (0 skips)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="evo-levels-"))
    loaded = load(args.model, args.device, workdir)
    info, model = loaded.info, loaded.model
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    tokens = calibration_tokens(loaded, args.samples, args.seq_len)
    layers = None if args.layers == "all" else int(args.layers)
    n_layers = len(info.layers)
    results: dict = {"model": args.model, "device": str(device), "dtype": str(dtype), "space": args.space,
                     "threads": torch.get_num_threads(), "precompute": {}, "materialise": {}}

    tic = time.perf_counter()
    stats = collect_activation_stats(model, info, tokens)
    results["stats_seconds"] = time.perf_counter() - tic
    hessians = None
    base_space = SearchSpace.load(args.space)
    quantizers = args.quantizers.split(",")
    if "gptq" in quantizers:
        _sync(device)
        tic = time.perf_counter()
        hessians = collect_hessians(model, info, tokens, workdir / "hessians")
        _sync(device)
        results["hessians_seconds"] = time.perf_counter() - tic
        print(f"Hessians: {results['hessians_seconds']:.1f} s ({args.samples} x {args.seq_len} tokens)", flush=True)

    for quantizer in quantizers:
        space = replace(base_space, base=replace(base_space.base, quantizer=quantizer))
        size_model = SizeModel.for_model(loaded, SizeCache(workdir / f"sizes-{quantizer}"), stats=stats)
        size_model.hessians = hessians
        table = limited_table(space, loaded, size_model, layers)
        store = LevelStore(table, device=device, dtype=dtype, hessians=hessians)
        _sync(device)
        cpu = _cpu_seconds()
        summary = store.build(workers=args.workers)
        _sync(device)
        cpu = _cpu_seconds() - cpu
        done = layers or n_layers
        row = {"levels": summary.levels, "seconds": summary.seconds, "sizes_coded": summary.sizes_coded,
               "tiers": summary.counts, "tier_bytes": summary.bytes, "layers": done,
               "seconds_all_layers": summary.seconds * n_layers / done, "cpu_seconds": cpu,
               "cpu_seconds_all_layers": cpu * n_layers / done}
        if layers is not None:  # the embedding/head levels once, not scaled with the layers
            other = LevelStore(limited_table(space, loaded, size_model, layers, "other"), device=device,
                               dtype=dtype, hessians=hessians)
            cpu = _cpu_seconds()
            extra = other.build(workers=args.workers)
            cpu = _cpu_seconds() - cpu
            row["embedding_seconds"] = extra.seconds
            row["seconds_all_layers"] += extra.seconds
            row["cpu_seconds_all_layers"] += cpu
            del other
        results["precompute"][quantizer] = row
        print(f"precompute {quantizer}: {summary.levels} levels of {done}/{n_layers} layers in "
              f"{summary.seconds:.1f} s (+ embedding/head {row.get('embedding_seconds', 0):.1f} s; whole space ≈ "
              f"{row['seconds_all_layers']:.0f} s wall, {row['cpu_seconds_all_layers']:.0f} s CPU); "
              f"tiers {summary.counts}", flush=True)
        if args.check and quantizer == "gptq":
            row["checked_equal"] = check_levels(store, table, stats, hessians, args.check, args.seed)
            print(f"gptq levels equal to per-tensor gptq: {row['checked_equal']} of {args.check}", flush=True)
        if args.materialise and layers is None and quantizer == "rtn":
            results["materialise"] = materialise(loaded, tokens, stats, space, table, store, args)
        del store, table, size_model

    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    return 0


def check_levels(store, table, stats, hessians, count: int, seed: int) -> int:
    """How many of `count` random gptq levels equal compress_tensor's per-tensor gptq (what evo compress
    and evo export write), weight for weight."""
    from evo.compress.apply import compress_tensor
    from evo.compress.plan import hessian_for, needs_hessian_for, stats_for

    pairs = [pair for pair in table.pairs() if needs_hessian_for(pair[1])]
    rng = random.Random(seed)
    equal = 0
    for source, setting in rng.sample(pairs, min(count, len(pairs))):
        weight = table.size_model.weights[source].to(store.device)
        alone = compress_tensor(weight, setting, stats_for(stats, source, setting),
                                hessian_for(hessians, source, setting).to(store.device))
        level, _ = store.weight(source, setting)
        equal += bool(torch.equal(alone.dequantized().to(store.device, store.dtype), level))
    return equal


def materialise(loaded, tokens, stats, space, table, store, args) -> dict:
    """ms per materialise() over the same random genomes: levels compressed on first use (before) and
    precomputed levels (after); the model is restored between the two."""
    info = loaded.info
    genes = space.genes(info)
    rng = random.Random(args.seed)
    genomes = [tuple(rng.randrange(len(g.choices)) for g in genes) for _ in range(args.materialise)]
    configs = [space.decode(genome, info) for genome in genomes]
    fitness = FitnessConfig(metric="ppl", screen_sequences=1, screen_tokens=2)
    evaluator = Evaluator(loaded.model, info, tokens, fitness, stats=stats, base_weights=table.size_model.weights)
    device = evaluator.device
    out = {}
    for name, levels in (("before", None), ("after", store)):
        evaluator.restore()
        evaluator.levels = levels
        times = []
        for config in configs:
            _sync(device)
            tic = time.perf_counter()
            evaluator.materialise(config)
            _sync(device)
            times.append((time.perf_counter() - tic) * 1e3)
        out[name] = {"ms_mean": float(np.mean(times)), "ms_median": float(np.median(times)),
                     "ms_first": times[0], "ms_last_half": float(np.mean(times[len(times) // 2:])),
                     "compressed": evaluator.stats.compressed, "genomes": len(configs)}
        print(f"materialise {name}: {out[name]['ms_mean']:.1f} ms/evaluation mean, median "
              f"{out[name]['ms_median']:.1f}, last half {out[name]['ms_last_half']:.1f} ({len(configs)} genomes)")
    evaluator.restore()
    return out


if __name__ == "__main__":
    raise SystemExit(main())
