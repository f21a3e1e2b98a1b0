"""The search loop's own overheads on a CPU (issue 19): a random 30-layer tiny Llama (hidden 64, the
depth of SmolLM2-135M, so per-tensor Python costs scale as on the real model while the forward stays
cheap), the default space, a three-stage schedule of a few tokens; prints, per variant, the loop's
evaluations/s, the milliseconds per evaluation of each part of the loop — forward + KL, materialise,
size (every size and budget check, the engine's repair included), store (journal, checkpoints),
engine (the rest: asks, tells, the loop's own bookkeeping) — the time of one size_of call (a warm
size model) and the journal's digest (every variant must search the same genomes to the same scores).

Variants, side by side in one run (each its own run directory over one shared size cache):
  shipped           what the search runs
  parts_sizes       sizes and budget checks by the memoised per-layer parts and bounds (before session 24;
                    shipped sizes every genome from the filled table's arrays, GenomeSizer)
  full_materialise  the evaluator's materialise before session 23: plan_model over every tensor of
                    the model for each evaluation, each tensor's setting key compared
  exact_budget      every budget check of repair/fill sizes the whole artifact (no bounds shortcut)
  config_sizes      every size and budget check decodes the genome and sizes its config through the
                    SizeModel (before session 23; the genome path looks up memoised parts by genes)

With --levels the level database is built first (as on CUDA: materialise is pointer swaps), else the
evaluator computes a level on first use (the CPU default). The size cache is kept in --out (the first
call codes ~11,000 pairs of the tiny model, a minute or two on 2 cores; later calls read it).

  python benchmarks/loop_cpu.py --generations 3 --levels --repeats 3 --out runs/loop-cpu
  # the same on another checkout, same --out: the journals must be identical (printed digest)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's evo
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _experiments import seeded_run  # noqa: E402
from evo.constants import SIZE_CACHE_DIR  # noqa: E402

VARIANTS = ("shipped", "parts_sizes", "full_materialise", "exact_budget", "config_sizes")
PARTS = ("forward_kl", "materialise", "size", "store", "engine")


def tiny_deep_model(directory: Path) -> Path:
    from tiny import build, tiny_config, tiny_tokenizer

    if not (directory / "config.json").exists():
        model = build(tiny_config("llama", tied=True, layers=30, bos_token_id=1, eos_token_id=2, pad_token_id=2))
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(directory)
        tiny_tokenizer().save_pretrained(directory)
    return directory


def tiny_loop_spec(out: Path, generations: int):
    """The search both this benchmark and size_calls_replay.py run: the tiny 30-layer model (written
    under out/tiny30 once), the default space, a budget halfway through its reach, and a forward of a
    few tokens, so the loop's overheads are what is measured, not the tiny model's forward."""
    from evo.modelio import load_model
    from evo.search.budget import early_budget_range
    from evo.search.loop import SearchSpec
    from evo.search.space import SearchSpace

    model_dir = tiny_deep_model(out / "tiny30")
    reach = early_budget_range(SearchSpace.load("default"), load_model(str(model_dir)))
    return SearchSpec(budget_bytes=(reach.smallest + reach.largest) // 2, model=str(model_dir), space="default",
                      generations=generations, population=16, samples=2, seq_len=8, clusters=2,
                      screen_sequences=1, screen_tokens=4, stages=((4, 0), (8, 8), (16, 4)))


def full_materialise(evaluator):
    """The evaluator's materialise before session 23 (the same swaps, planned over every tensor)."""
    from evo.compress.plan import plan_model

    def materialise(config):
        plan = plan_model(evaluator.info, config)
        evaluator._set_drops(config.drops)
        swapped = compressed = 0
        for tensor in plan.tensors:
            key = tensor.setting.key()
            if evaluator._resident[tensor.source] == key:
                continue
            compressed += evaluator._swap_in(tensor.source, tensor.setting, key)
            swapped += 1
        return swapped, compressed

    return materialise


def run_variant(name: str, spec, model_dir: Path, out: Path, levels: bool) -> dict:
    from search_throughput import Timer

    from evo.search.loop import open_session, run_search

    run = out / f"run-{name}"
    shutil.rmtree(run, ignore_errors=True)
    with seeded_run({}, out / SIZE_CACHE_DIR):
        session = open_session(spec, run, resume=False)
    tic = time.perf_counter()
    session.fill_size_table(workers=None, levels=levels)
    table_seconds = time.perf_counter() - tic
    evaluator, table = session.evaluator, session.size_table
    if name == "full_materialise":
        evaluator.materialise = full_materialise(evaluator)
    if name == "parts_sizes":
        table.fast_sizes = False
    if name == "exact_budget":
        table.fast_sizes = False
        table.exceeds = lambda genome, budget: table.artifact_bytes(genome) > budget
    if name == "config_sizes":  # every size and budget check decodes the genome and sizes the config
        by_config = (lambda genome: session.size_model.artifact_bytes(session.config_of(genome)))
        table.artifact_bytes = by_config
        table.exceeds = lambda genome, budget: by_config(genome) > budget
    counts = {"budget_checks": 0, "whole_artifact_sized": 0}

    def counted(key, function):
        def call(*a, **k):
            counts[key] += 1
            return function(*a, **k)
        return call

    session.size_model.size_of_plan = counted("whole_artifact_sized", session.size_model.size_of_plan)
    table.exceeds = counted("budget_checks", table.exceeds)
    timer = Timer(evaluator.device)
    evaluator._kl = timer.wrap("forward_kl", evaluator._kl)
    evaluator.materialise = timer.wrap("materialise", evaluator.materialise)
    session.size_model.artifact_bytes = timer.wrap("size", session.size_model.artifact_bytes)
    table.exceeds = timer.wrap("size", table.exceeds)
    size_of = session.size_of
    session.size_of = timer.wrap("size", size_of)
    for method in ("append", "sync", "write_checkpoint", "write_front", "write_text", "write_json"):
        setattr(session.store, method, timer.wrap("store", getattr(session.store, method)))
    tic = time.perf_counter()
    result = run_search(session)
    loop = time.perf_counter() - tic
    parts = dict(timer.seconds)
    parts["engine"] = max(0.0, loop - sum(parts.values()))
    lines = [line for line in (run / "journal.jsonl").read_text().splitlines() if line.strip()]
    stripped = [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]
    digest = hashlib.sha256(json.dumps(stripped, sort_keys=True).encode()).hexdigest()[:16]
    n = result.new_evaluations
    ms = {part: 1000 * parts.get(part, 0.0) / n for part in PARTS}
    row = {"evaluations": n, "loop_seconds": loop, "evals_per_second": n / loop,
           "ms_per_evaluation": ms, "non_forward_ms": sum(v for k, v in ms.items() if k != "forward_kl"),
           "swapped_per_evaluation": evaluator.stats.swapped / max(evaluator.stats.evaluations, 1),
           "size_table_seconds": table_seconds, "journal_digest": digest, **counts, "session": session}
    return row


def interleaved_parts(session, run: Path, rounds: int) -> dict:
    """materialise (diffing vs planned over every tensor vs in-place batched copies vs session 23's) and
    sizing (the table's arrays vs its memoised per-layer parts vs decode + SizeModel)
    over the shipped run's journal of genomes, in the order evaluated, the two ways alternating round by
    round (a load change on a shared machine hits both): the least ms per call of each."""
    from evo.evaluate.evaluator import Evaluator

    entries = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines() if line.strip()]
    genomes = [tuple(e["genome"]) for e in entries]
    configs = [session.config_of(g) for g in genomes]
    evaluator, table, model = session.evaluator, session.size_table, session.size_model
    ways = {
        "materialise_diffing": lambda: [Evaluator.materialise(evaluator, c) for c in configs],
        "materialise_full": lambda: [full_materialise(evaluator)(c) for c in configs],
        "materialise_in_place": lambda: _in_place(evaluator, configs),
        "materialise_s23": lambda: [s23_materialise(evaluator)(c) for c in configs],
        "size_genome_path": lambda: [table.artifact_bytes(g) for g in genomes],
        "size_parts_path": lambda: [table.artifact_bytes_by_parts(g) for g in genomes],
        "size_config_path": lambda: [model.size(session.space.decode(g, session.loaded.info)) for g in genomes],
    }
    best = {name: float("inf") for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            evaluator.restore()
            model._memo.clear()  # every config sized anew (their parts stay memoised, as in a search)
            tic = time.perf_counter()
            way()
            best[name] = min(best[name], 1000 * (time.perf_counter() - tic) / len(genomes))
    evaluator.restore()
    return best


def s23_materialise(evaluator):
    """The evaluator's materialise of session 23 (before the batched copies and the level memo): per
    changed tensor a membership test and a lookup in the level database, then a pointer swap."""

    def materialise(config):
        evaluator._set_drops(config.drops)
        swapped = 0
        resident, levels = evaluator._resident, evaluator.levels
        for part, plan in evaluator._plan_parts(config):
            if evaluator._resident_plans.get(part) is plan:
                continue
            for source, setting, key in plan:
                if resident[source] != key:
                    param = evaluator._params[source]
                    if levels is not None and (source, setting) in levels:
                        weight, shared = levels.weight(source, setting)
                        if shared and not evaluator._copy_levels():
                            param.data = weight
                        else:
                            evaluator._write_own(source, weight)
                        resident[source] = key
                    else:
                        evaluator._swap_in(source, setting, key)
                    swapped += 1
            evaluator._resident_plans[part] = plan
        return swapped, 0

    return materialise


def _in_place(evaluator, configs) -> None:
    """materialise as under CUDA graphs: levels copied into the parameters (one batched copy per genome)."""
    from evo.evaluate.evaluator import Evaluator

    evaluator.level_copies = True
    try:
        for config in configs:
            Evaluator.materialise(evaluator, config)
    finally:
        evaluator.level_copies = None


def _fastest(repeats: list[dict]) -> dict:
    """A variant's repeats as one row: each part's least ms per evaluation (the run least disturbed by
    other load), the loop's rate from their sum."""
    row = dict(repeats[0])
    ms = {part: min(r["ms_per_evaluation"][part] for r in repeats) for part in PARTS}
    row.update(ms_per_evaluation=ms, non_forward_ms=sum(v for k, v in ms.items() if k != "forward_kl"),
               evals_per_second=1000 / sum(ms.values()), repeats=len(repeats))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--size-calls", type=int, default=400, help="random genomes timed through size_of")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated from {list(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=1, help="runs per variant, round robin; each part's "
                        "fastest is reported")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of the interleaved timings")
    parser.add_argument("--levels", action="store_true", help="build the level database first (as on CUDA)")
    parser.add_argument("--out", default="runs/loop-cpu")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}: use {list(VARIANTS)}")
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    spec = tiny_loop_spec(out, args.generations)
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    session = None
    for _ in range(args.repeats):  # round robin: a load change on a shared machine hits every variant
        for name in variants:
            row = run_variant(name, spec, Path(spec.model), out, args.levels)
            session = session or row["session"]
            row.pop("session")
            runs[name].append(row)
            print(f"[{name}] " + json.dumps(row), flush=True)
    rows = {name: _fastest(repeats) for name, repeats in runs.items()}
    rng = random.Random(0)
    genomes = [tuple(rng.randrange(len(g.choices)) if g.kind != "drop" else rng.choice([0, 0, 0, 1, 2, 3])
                     for g in session.genes) for _ in range(args.size_calls)]
    session.size_of = type(session).size_of.__get__(session)  # untimed
    interleaved = interleaved_parts(session, out / f"run-{variants[0]}", args.rounds)
    for genome in genomes:  # warm: every layer segment and row known
        session.size_of(genome)
    session.size_model._memo.clear()  # but not the configs themselves
    tic = time.perf_counter()
    for genome in genomes:
        session.size_of(genome)
    size_ms = 1000 * (time.perf_counter() - tic) / len(genomes)
    print()
    print("| variant | evals/s | ms/eval: " + " · ".join(PARTS) + " | non-forward ms | tensors swapped/eval "
          "| budget checks (whole artifact sized) | journal digest |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        ms = row["ms_per_evaluation"]
        print(f"| {name} | {row['evals_per_second']:.1f} | " + " · ".join(f"{ms[p]:.2f}" for p in PARTS)
              + f" | {row['non_forward_ms']:.2f} | {row['swapped_per_evaluation']:.0f} | {row['budget_checks']} "
              f"({row['whole_artifact_sized']}) | {row['journal_digest']} |")
    digests = {r["journal_digest"] for repeats in runs.values() for r in repeats}
    print(f"\nsize_of (warm) {size_ms:.3f} ms; journals identical across variants: {len(digests) == 1}")
    print("interleaved over the journal's genomes, ms per call (least of --rounds alternating rounds): "
          + json.dumps(interleaved))
    print(json.dumps({"variants": rows, "size_of_ms": size_ms, "levels": args.levels, "interleaved": interleaved}))
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
