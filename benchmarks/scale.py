"""Scale (issue 15): Llama-3.2-1B and Llama-3.1-8B, randomly initialised from their configs (no
download; quality on random weights means nothing, time and memory do), bf16 on one GPU: the memory
plan evo prints, peak GPU and host memory, the time of the level database of the `bits` space (every
decoder linear at every width, on the GPU; extrapolated from the layers timed when the deadline
leaves no time for all, and said so), seconds per evaluation at 16 x 512 tokens (the dense top-k
reference computed first), and the projected time of an EvoPress-scale run of 20,000 evaluations.
Needs no Ray (the GPU machine does not have it) and nothing from the network.

  # on one H200 (the lead's command; <= 8 min):
  python benchmarks/scale.py --device cuda --deadline-s 450 --out benchmarks/results/scale_h200.md
  # CPU smoke (a tiny config of the same family, seconds):
  python benchmarks/scale.py --smoke

Seconds per evaluation are measured three ways: cold (the candidate's levels computed on first use, as a
run's first generation does), warm (every level of the candidate cached on the GPU: swap + forward +
KL, the steady state once the level database is resident) and forward only (the same candidate again:
nothing swapped). The projection takes the level database, the reference, and 20,000 warm evaluations
at the full 16 x 512 (an upper bound: a multi-stage run screens most candidates on fewer tokens).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's evo, not an installed one

from evo.compress.apply import compress_tensor  # noqa: E402
from evo.evaluate.evaluator import Evaluator, FitnessConfig  # noqa: E402
from evo.evaluate.reference import DEFAULT_TAIL_SAMPLES, DenseReference  # noqa: E402
from evo.modelio import describe_model  # noqa: E402
from evo.search.memory_plan import inputs_for, plan_memory  # noqa: E402
from evo.search.space import SearchSpace  # noqa: E402

VOCAB = 128256
CONFIGS = {  # from the models' config.json (meta-llama), without their weights
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=VOCAB, tie_word_embeddings=True,
                         rope_theta=500000.0, max_position_embeddings=131072, rms_norm_eps=1e-5,
                         rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, vocab_size=VOCAB, tie_word_embeddings=False,
                         rope_theta=500000.0, max_position_embeddings=131072, rms_norm_eps=1e-5,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=1024, tie_word_embeddings=True,
                 max_position_embeddings=512),
}
RUN_EVALUATIONS = 20_000
TOP_K = 256


def rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(name: str, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**CONFIGS[name])
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    info = describe_model(meta, model_id=name)
    del meta
    torch.manual_seed(0)
    tic = time.perf_counter()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    sync(device)
    return info, model, time.perf_counter() - tic


def level_database(model, info, space, device, deadline: float) -> dict:
    """Every (decoder linear, setting) level of the space, dequantized on the device, layer by layer
    (each discarded once timed); the embedding's levels too. Stops at `deadline` and extrapolates."""
    names = [n for n, _ in space.unit_genes]
    import itertools

    settings = [space.setting(dict(zip(names, v))) for v in itertools.product(*(v for _, v in space.unit_genes))]
    params = dict(model.named_parameters())
    timed, seconds = 0, 0.0
    with torch.no_grad():
        for layer in info.layers:
            if time.perf_counter() > deadline and timed:
                break
            sync(device)
            tic = time.perf_counter()
            for linear in layer.linears:
                weight = params[linear.name].detach()
                for setting in settings:
                    level = compress_tensor(weight, setting).dequantized().to(weight.dtype)
                    del level
            sync(device)
            seconds += time.perf_counter() - tic
            timed += 1
        sync(device)
        tic = time.perf_counter()
        embedding = model.get_input_embeddings().weight.detach()
        for bits in space.embedding_bits:
            del_level = compress_tensor(embedding, space.setting({"bits": bits}, key="embedding.bits")).dequantized()
            del del_level
        sync(device)
        embedding_seconds = time.perf_counter() - tic
    layers = len(info.layers)
    total = seconds / timed * layers + embedding_seconds
    return {"levels_per_linear": len(settings), "layers_timed": timed, "layers": layers,
            "seconds_timed": seconds + embedding_seconds, "seconds": total, "extrapolated": timed < layers}


def random_configs(space, info, count: int, seed: int):
    genes = space.genes(info)
    rng = random.Random(seed)
    return [space.decode(tuple(rng.randrange(len(g.choices)) for g in genes), info) for _ in range(count)]


def measure(name: str, args, deadline: float) -> dict:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    space = SearchSpace.load(args.space)
    row: dict = {"model": name, "device": str(device), "dtype": args.dtype, "sequences": args.sequences,
                 "tokens": args.tokens}
    # the plan evo prints, from the shapes alone, before the model exists
    from transformers import AutoModelForCausalLM, LlamaConfig

    with torch.device("meta"):
        meta_info = describe_model(AutoModelForCausalLM.from_config(LlamaConfig(**CONFIGS[name])), model_id=name)
    dtype_bytes = torch.empty((), dtype=dtype).element_size()
    plan = plan_memory(inputs_for(meta_info, space, dtype_bytes=dtype_bytes, sequences=args.sequences,
                                  tokens=args.tokens, top_k=TOP_K, tail_samples=DEFAULT_TAIL_SAMPLES,
                                  device=device.type, run_dir=Path(args.out).parent if args.out else Path(".")))
    print(plan.table(), flush=True)
    row["plan"] = {"base_gb": plan.base_bytes / 1e9, "levels_gb": plan.level_bytes / 1e9,
                   "level_codes_gb": plan.level_code_bytes / 1e9, "micro_batch": plan.micro_batch,
                   "tiers": {t.name: [t.planned_bytes / 1e9, len(t.layers)] for t in plan.tiers},
                   "refusal": plan.refusal}
    if plan.refusal:
        row["refused"] = plan.refusal
        return row
    rss_before = rss_bytes()
    info, model, build_seconds = build(name, device, dtype)
    row["build_s"] = build_seconds
    row["parameters_b"] = info.total_parameters / 1e9
    tokens = torch.randint(0, CONFIGS[name]["vocab_size"], (args.sequences, args.tokens),
                           generator=torch.Generator().manual_seed(0))
    sync(device)
    tic = time.perf_counter()
    reference = DenseReference.compute(model, tokens, top_k=TOP_K)
    sync(device)
    row["reference_s"] = time.perf_counter() - tic
    # the level database gets at most half of what is left of this model's share of the deadline
    share_end = time.perf_counter() + (deadline - time.perf_counter()) * args.level_share
    row["levels"] = level_database(model, info, space, device, share_end)
    fitness = FitnessConfig(metric="kl", screen_sequences=1, screen_tokens=min(128, args.tokens), top_k=TOP_K)
    evaluator = Evaluator(model, info, tokens, fitness, reference)
    configs = random_configs(space, info, args.evaluations, seed=0)

    def seconds_per_evaluation(batch) -> list[float]:
        """Wall seconds of each evaluation in order, at least one, the rest until the deadline."""
        times = []
        for config in batch:
            if time.perf_counter() > deadline and times:
                break
            sync(device)
            tic = time.perf_counter()
            evaluator.evaluate(config)
            sync(device)
            times.append(time.perf_counter() - tic)
        return times

    cold = seconds_per_evaluation(configs)  # first use: each candidate's missing levels computed on the device
    warm = seconds_per_evaluation(configs[:len(cold)])  # again, in order: every level cached (unless evicted)
    sync(device)
    tic = time.perf_counter()
    evaluator.evaluate(configs[len(warm) - 1])  # the last one again: nothing to swap
    sync(device)
    forward_only = time.perf_counter() - tic
    stats = evaluator.stats
    row.update(cold_s=sum(cold) / len(cold), warm_s=sorted(warm)[len(warm) // 2], forward_s=forward_only,
               evaluations_timed=len(cold) + len(warm) + 1, recomputed=stats.recomputed,
               cache_gb=stats.cache_bytes / 1e9, micro_batch=evaluator.micro_batch(args.sequences, args.tokens))
    row["projected_h"] = (row["levels"]["seconds"] + row["reference_s"] + RUN_EVALUATIONS * row["warm_s"]) / 3600
    if device.type == "cuda":
        row["peak_gpu_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    row["rss_gb"] = (rss_bytes() - rss_before) / 1e9
    row["peak_rss_gb"] = peak_rss_bytes() / 1e9
    del evaluator, model, reference
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def table(rows: list[dict]) -> str:
    head = ("| model | params (B) | plan: base / levels GB (tiers) | level db (s) | reference (s) | s/eval cold | "
            "s/eval warm | forward only (s) | micro-batch | peak GPU GB | host RSS GB (peak) | 20k evals (h) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['model']} | refused: {r['refused']} |")
            continue
        lv = r["levels"]
        tiers = ", ".join(f"{k} {v[0]:.1f}" for k, v in r["plan"]["tiers"].items() if v[0])
        level = f"{lv['seconds']:.1f}" + (f" (from {lv['layers_timed']}/{lv['layers']} layers)" if lv["extrapolated"]
                                           else "")
        lines.append(
            f"| {r['model']} | {r['parameters_b']:.2f} | {r['plan']['base_gb']:.1f} / {r['plan']['levels_gb']:.1f} "
            f"({tiers}) | {level} | {r['reference_s']:.2f} | {r['cold_s']:.3f} | {r['warm_s']:.3f} | "
            f"{r['forward_s']:.3f} | {r['micro_batch']} | {r.get('peak_gpu_gb', float('nan')):.1f} | "
            f"{r['rss_gb']:.1f} ({r['peak_rss_gb']:.1f}) | {r['projected_h']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="llama-3.2-1b,llama-3.1-8b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--space", default="bits")
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--evaluations", type=int, default=8, help="random candidates timed cold, then warm")
    parser.add_argument("--level-share", type=float, default=0.4,
                        help="of a model's share of the deadline, the most the level database may take")
    parser.add_argument("--deadline-s", type=float, default=450.0, help="wall-clock budget of the whole benchmark")
    parser.add_argument("--smoke", action="store_true", help="CPU, a tiny config, 2 x 64 tokens")
    parser.add_argument("--out", default=None, help="write the table (markdown) and the rows (.json beside it)")
    args = parser.parse_args()
    if args.smoke:
        args.models, args.device, args.dtype, args.sequences, args.tokens = "tiny", "cpu", "float32", 2, 64
        args.evaluations, args.deadline_s = 3, 120.0
    started = time.perf_counter()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    rows = []
    for i, name in enumerate(names):
        # each model gets an equal share of what is left; the larger one last gets the rest
        left = args.deadline_s - (time.perf_counter() - started)
        deadline = time.perf_counter() + left / (len(names) - i)
        print(f"== {name}", flush=True)
        rows.append(measure(name, args, deadline))
        print(json.dumps(rows[-1], indent=1), flush=True)
    text = table(rows)
    print(text)
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device.startswith("cuda") else "CPU"
        out.write_text(f"# Scale ({gpu}, {args.dtype}, {args.sequences} x {args.tokens} tokens, space {args.space})\n\n"
                       f"`{' '.join(sys.argv)}`\n\n{text}\n")
        out.with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
