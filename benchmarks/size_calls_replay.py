"""The size calls of benchmarks/loop_cpu.py's shipped search (every budget check of repair and fill with its
budget, every evaluation's size), recorded, then replayed through a fresh size model and table twin per
round (as a new search starts: SizeModel.fresh + SizeTable.sharing, their setup untimed): the filled
table's arrays (GenomeSizer) against the memoised per-layer parts and bounds (before session 24),
alternating round by round, least of --rounds; every answer is asserted equal to the parts path's.

  python benchmarks/size_calls_replay.py --out runs/loop-cpu --rounds 5   # loop_cpu's --out: its size cache
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's evo
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="runs/loop-cpu")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from _experiments import seeded_run
    from loop_cpu import tiny_loop_spec

    from evo.constants import SIZE_CACHE_DIR
    from evo.search.loop import open_session, run_search

    out = Path(args.out)
    spec = tiny_loop_spec(out, args.generations)
    run = out / "run-replay"
    shutil.rmtree(run, ignore_errors=True)
    with seeded_run({}, out / SIZE_CACHE_DIR):
        session = open_session(spec, run, resume=False)
    session.fill_size_table(workers=None, levels=False)
    table = session.size_table
    calls: list[tuple[tuple[int, ...], int | None]] = []  # (genome, budget) of a check, (genome, None) of a size
    exceeds, size_of = table.exceeds, session.size_of
    table.exceeds = lambda genome, budget: calls.append((tuple(genome), budget)) or exceeds(genome, budget)
    session.size_of = lambda genome, config=None: calls.append((tuple(genome), None)) or size_of(genome, config)
    evaluations = run_search(session).new_evaluations
    answers = [table.artifact_bytes_by_parts(g) if b is None else table.exceeds_by_parts(g, b) for g, b in calls]
    checks = sum(b is not None for _, b in calls)
    print(f"{len(calls)} calls ({checks} budget checks) for {evaluations} evaluations")
    best = {"arrays": float("inf"), "parts": float("inf")}
    for _ in range(args.rounds):
        for way in best:
            twin = table.sharing(session.size_model.fresh())
            twin.fast_sizes = way == "arrays"
            tic = time.perf_counter()
            got = [twin.artifact_bytes(g) if b is None else twin.exceeds(g, b) for g, b in calls]
            best[way] = min(best[way], time.perf_counter() - tic)
            if got != answers:
                raise SystemExit(f"the {way} path answered otherwise than the parts path")
    for way, seconds in best.items():
        print(f"{way}: {1000 * seconds:.1f} ms for the calls, {1000 * seconds / evaluations:.2f} ms per evaluation, "
              f"{1e6 * seconds / len(calls):.0f} us per call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
