"""The search loop's own overheads on a CPU (issue 19): a random 30-layer tiny Llama (hidden 64, the
depth of SmolLM2-135M, so per-tensor Python costs scale as on the real model while the forward stays
cheap), the default space, a three-stage schedule; prints the loop's evaluations/s and the time of one
size_of call (a warm size model: every layer segment known) so that a checkout can be compared with
another on the same machine. The size cache is kept in --out (the first call codes ~11,000 pairs,
minutes on 2 cores; later calls read it), the levels are computed on first use (the CPU default).

  python benchmarks/loop_cpu.py --generations 3 --out runs/loop-cpu
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


def tiny_deep_model(directory: Path) -> Path:
    from tiny import build, tiny_config, tiny_tokenizer

    if not (directory / "config.json").exists():
        model = build(tiny_config("llama", tied=True, layers=30, bos_token_id=1, eos_token_id=2, pad_token_id=2))
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(directory)
        tiny_tokenizer().save_pretrained(directory)
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--size-calls", type=int, default=400, help="random genomes timed through size_of")
    parser.add_argument("--out", default="runs/loop-cpu")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from evo.modelio import load_model
    from evo.search.budget import early_budget_range
    from evo.search.loop import SearchSpec, open_session, run_search
    from evo.search.space import SearchSpace

    out = Path(args.out)
    model_dir = tiny_deep_model(out / "tiny30")
    loaded = load_model(str(model_dir))
    reach = early_budget_range(SearchSpace.load("default"), loaded)
    spec = SearchSpec(budget_bytes=(reach.smallest + reach.largest) // 2, model=str(model_dir), space="default",
                      generations=args.generations, population=16, samples=8, seq_len=64, clusters=4,
                      screen_sequences=2, screen_tokens=32, stages=((64, 0), (256, 8), (512, 4)))
    run = out / "run"
    shutil.rmtree(run, ignore_errors=True)
    with seeded_run({}, out / SIZE_CACHE_DIR):
        session = open_session(spec, run, resume=False)
    tic = time.perf_counter()
    session.fill_size_table(workers=None)
    table = time.perf_counter() - tic
    tic = time.perf_counter()
    result = run_search(session)
    loop = time.perf_counter() - tic
    lines = [line for line in (run / "journal.jsonl").read_text().splitlines() if line.strip()]
    stripped = [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]
    digest = hashlib.sha256(json.dumps(stripped, sort_keys=True).encode()).hexdigest()[:16]
    rng = random.Random(0)
    genomes = [tuple(rng.randrange(len(g.choices)) if g.kind != "drop" else rng.choice([0, 0, 0, 1, 2, 3])
                     for g in session.genes) for _ in range(args.size_calls)]
    for genome in genomes:  # warm: every layer segment and row known
        session.size_of(genome)
    session.size_model._memo.clear()  # but not the configs themselves
    tic = time.perf_counter()
    for genome in genomes:
        session.size_of(genome)
    size_ms = 1000 * (time.perf_counter() - tic) / len(genomes)
    report = {"evaluations": result.new_evaluations, "loop_seconds": loop,
              "evals_per_second": result.new_evaluations / loop, "size_of_ms": size_ms,
              "size_table_seconds": table, "journal_digest": digest}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
