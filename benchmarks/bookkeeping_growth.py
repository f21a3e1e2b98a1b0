"""How the search loop's bookkeeping grows with the run's length (issue 19, EvoPress scale): the real
loop (DEAP engine, size table, run store, checkpoints, front, best) on loop_cpu's random 30-layer tiny
Llama and the default space, population 64 and a three-stage schedule (every offspring screened, the
best 16 re-scored, the best 8 on the final stage: 152 evaluations per generation, as EvoPress's
2k/16k/32k schedule with 16 and 8 survivors), with the forward replaced by a deterministic score of the
genome (no model runs: only bookkeeping is timed). Prints ms per generation of each part against the
generation:

  journal     store.append + store.sync (one fsync per generation)
  checkpoint  loop._checkpoint: the front, best.toml, the engine's state and checkpoint.json
    ckpt_write  of which store.write_checkpoint (JSON of the engine state, atomic write, fsync)
    state       of which the engine's state_dict
  decode      session.config_of of the evaluated genomes (memoised per genome)
  size        every size and budget check (the engine's repair included)
  engine      the rest of the loop (asks, tells, the loop's own work)

and the checkpoint's bytes. The size cache is kept in --out (the first call codes ~11,000 pairs of the
tiny model, a minute or two on 2 cores; later calls read it).

  python benchmarks/bookkeeping_growth.py --generations 132 --out runs/loop-cpu   # ≈ 20,000 evaluations
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's evo
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _experiments import seeded_run  # noqa: E402
from evo.constants import CHECKPOINT_FILE, SIZE_CACHE_DIR  # noqa: E402

PARTS = ("journal", "checkpoint", "ckpt_write", "state", "decode", "size", "engine")
TOP_LEVEL = ("journal", "checkpoint", "decode", "size")  # disjoint; engine = loop wall minus these


def parts_clock():
    """Cumulative seconds by part, a call inside a call of the same clock counted once (outermost):
    search_throughput's Timer, on the CPU (no device syncs)."""
    import torch
    from search_throughput import Timer

    return Timer(torch.device("cpu"))


def genome_score(genome: tuple[int, ...]) -> float:
    """A deterministic stand-in for the KL: lower choices (fewer bits) cost more, plus a hash's noise."""
    noise = int.from_bytes(hashlib.blake2b(bytes(genome), digest_size=4).digest(), "little") / 2**32
    return sum(1.0 / (1 + g) for g in genome) + 0.01 * noise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", type=int, default=132)
    parser.add_argument("--population", type=int, default=64)
    parser.add_argument("--every", type=int, default=10, help="print one row per this many generations")
    parser.add_argument("--out", default="runs/loop-cpu")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from loop_cpu import tiny_deep_model

    from evo.modelio import load_model
    from evo.search import loop
    from evo.search.budget import early_budget_range
    from evo.search.engines.deap_engine import DeapEngine
    from evo.search.loop import SearchSpec, open_session, run_search
    from evo.search.space import SearchSpace

    out = Path(args.out)
    model_dir = tiny_deep_model(out / "tiny30")
    loaded = load_model(str(model_dir))
    reach = early_budget_range(SearchSpace.load("default"), loaded)
    spec = SearchSpec(budget_bytes=(reach.smallest + reach.largest) // 2, model=str(model_dir), space="default",
                      generations=args.generations, population=args.population, samples=2, seq_len=8, clusters=2,
                      screen_sequences=1, screen_tokens=4, stages=((4, 0), (8, 16), (16, 8)))
    run = out / "run-growth"
    shutil.rmtree(run, ignore_errors=True)
    with seeded_run({}, out / SIZE_CACHE_DIR):
        session = open_session(spec, run, resume=False)
    session.fill_size_table(workers=None, levels=False)

    clock, inner = parts_clock(), parts_clock()  # inner: the checkpoint's own parts
    last: dict[str, tuple] = {}
    config_of = session.config_of

    def recorded_config_of(genome):
        last["genome"] = tuple(genome)
        return config_of(genome)

    session.config_of = clock.wrap("decode", recorded_config_of)
    session.evaluator.evaluate = lambda config, stage: genome_score(last["genome"]) * (1 + 1 / stage)
    session.size_of = clock.wrap("size", session.size_of)
    table = session.size_table
    table.exceeds = clock.wrap("size", table.exceeds)
    store = session.store
    for method in ("append", "sync"):
        setattr(store, method, clock.wrap("journal", getattr(store, method)))
    store.write_checkpoint = inner.wrap("ckpt_write", store.write_checkpoint)
    original_state = DeapEngine.state_dict
    DeapEngine.state_dict = inner.wrap("state", original_state)

    rows: list[dict] = []
    marks = {"wall": time.perf_counter(), "evals": 0}
    previous: dict[str, float] = {}
    original_checkpoint = loop._checkpoint
    timed_checkpoint = clock.wrap("checkpoint", original_checkpoint)

    def checkpoint(session_, engine):
        timed_checkpoint(session_, engine)
        now = time.perf_counter()
        totals = {**clock.seconds, **inner.seconds}
        delta = {p: 1000 * (totals.get(p, 0.0) - previous.get(p, 0.0)) for p in totals}
        previous.update(totals)
        wall = 1000 * (now - marks["wall"])
        evaluations = len(session_.store) - marks["evals"]
        delta["engine"] = wall - sum(delta.get(p, 0.0) for p in TOP_LEVEL)
        rows.append({"generation": engine.generation, "evaluations": len(session_.store), "new": evaluations,
                     "wall_ms": wall, "checkpoint_bytes": (run / CHECKPOINT_FILE).stat().st_size,
                     **{p: delta.get(p, 0.0) for p in PARTS}})
        marks.update(wall=time.perf_counter(), evals=len(session_.store))

    loop._checkpoint = checkpoint
    try:
        tic = time.perf_counter()
        result = run_search(session)
        seconds = time.perf_counter() - tic
    finally:
        loop._checkpoint = original_checkpoint
        DeapEngine.state_dict = original_state
    lines = [line for line in (run / "journal.jsonl").read_text().splitlines() if line.strip()]
    stripped = [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]
    digest = hashlib.sha256(json.dumps(stripped, sort_keys=True).encode()).hexdigest()[:16]
    print("| generation | evaluations | ms/gen: " + " · ".join(PARTS) + " | bookkeeping ms/gen | checkpoint KB |")
    print("|---|---|---|---|---|")
    for row in rows:
        if row["generation"] in (1, 2) or row["generation"] % args.every == 0 or row is rows[-1]:
            book = row["journal"] + row["checkpoint"] + row["decode"]
            print(f"| {row['generation']} | {row['evaluations']} | " + " · ".join(f"{row[p]:.1f}" for p in PARTS)
                  + f" | {book:.1f} | {row['checkpoint_bytes'] / 1024:.0f} |")
    print(f"\n{result.new_evaluations} evaluations in {seconds:.1f} s ({result.new_evaluations / seconds:.1f}/s, "
          f"no forward); journal digest {digest}")
    print(json.dumps({"rows": rows, "seconds": seconds, "evaluations": result.new_evaluations, "digest": digest}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
