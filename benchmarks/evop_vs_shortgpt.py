"""EvoP's pattern search where heuristics break (issue 19): the `evop` space at 25 % depth (--drop 8
of SmolLM2-135M's 30 layers removed, every other tensor bf16) with EvoPress's long schedule, against
ShortGPT's choice at the same depth (the --drop layers of lowest block influence on the same
calibration tokens, as `evo baseline shortgpt --drop 8 --calibration RUN/calibration.json` does),
for each seed; held-out WikiText-2 and C4 perplexity of both exported artifacts, mean ± std.
(EvoPress reports 8.66 vs 43.26 on Mistral-7B at 25 %; at 3 layers both picked the same layers here.)

  # on one H200 beside ccds_vs_random.py, the three seeds at once (the call's command:
  # PHASE=evop bash benchmarks/issue19_h200.sh; calls add up, a rerun continues what a deadline stopped):
  python benchmarks/evop_vs_shortgpt.py --device cuda --seeds 0,1,2 --jobs 3 --threads 2 --size-workers 8 \\
      --drop 8 --generations 30 --population 32 --samples 64 --seq-len 512 --stages 2048,16384:16,32768:8 \\
      --reserve-s 80 --deadline-s 480 --out $OUT/evop --work-dir /tmp/issue19/evop
  # CPU smoke (add --jobs 2 --seeds 0,1 for the worker processes):
  python benchmarks/evop_vs_shortgpt.py --smoke

Each seed is a job: its run (under --work-dir) draws the seed's CCDS calibration set, ShortGPT's
choice on those tokens is measured first, then the search runs until it ends or --reserve-s
before the deadline and its best full-stage evaluation so far is exported (marked * when the
deadline stopped it; a rerun continues it). --jobs as in ccds_vs_random.py: the seeds side by side
in worker processes, the size table, budget, texts and dense PPL once in the parent.

The space is evop.toml with fixed_drops = --drop (written to OUT/evop<drop>.toml); the budget is
the dense bf16 artifact's bytes less one (every choice of --drop layers fits, so the comparison is
at equal layers removed). ShortGPT's seed changes only its calibration tokens (the seed's CCDS draw).
"""

from __future__ import annotations

import json
from pathlib import Path

from _experiments import (
    Deadline,
    best_to_export,
    cached_eval_texts,
    deadline_note,
    export_and_measure,
    load_experiment_model,
    mean_std,
    open_run,
    parse_with_smoke,
    perplexities,
    prefill_size_table,
    say_as,
    search_until,
    work_dir,
)
from _searchbench import write_json
from _workers import experiment_parser, finished_result, result_path, run_experiment
from evo.constants import FINAL_STAGE, SIZE_CACHE_DIR

SMOKE = ["--device", "cpu", "--seeds", "0", "--drop", "2", "--generations", "1", "--population", "4",
         "--samples", "4", "--seq-len", "64", "--stages", "64,128:2,256:1", "--max-tokens", "256",
         "--size-workers", "1", "--deadline-s", "420", "--reserve-s", "30", "--out", "runs/evop_vs_shortgpt-smoke"]


def space_file(out: Path, drop: int) -> Path:
    """evop.toml with fixed_drops = drop."""
    import re

    import evo.search

    source = Path(evo.search.__file__).parent / "spaces" / "evop.toml"
    text = re.sub(r"(?m)^fixed_drops\s*=\s*\d+", f"fixed_drops = {drop}", source.read_text())
    text = re.sub(r'(?m)^name\s*=\s*"evop"', f'name = "evop{drop}"', text)
    path = out / f"evop{drop}.toml"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def run_seed(loaded, args, seed: int, budget: int, space: Path, texts, deadline: Deadline) -> dict | None:
    """One seed: open its run (the seed's CCDS draw), measure ShortGPT's choice on those calibration
    tokens first, then search until it ends or --reserve-s before the deadline and export the best
    found (a search the deadline stopped: its best so far, "complete": false; a rerun continues it)."""
    from evo.baselines import block_influence, shortgpt_config
    from evo.search.loop import SearchSpec
    from evo.search.schedule import parse_stages

    label = f"s{seed}"
    done = finished_result(args.out, label)
    if done is not None:
        return done
    say = say_as(f"evop s{seed}")
    run_dir = work_dir(args) / label
    spec = SearchSpec(budget_bytes=budget, model=args.model, space=str(space), generations=args.generations,
                      population=args.population, samples=args.samples, seq_len=args.seq_len,
                      clusters=min(8, args.samples), seed=seed, screen_sequences=1,
                      screen_tokens=min(128, args.seq_len),
                      stages=parse_stages(args.stages) if args.stages else ())
    session = open_run(spec, run_dir, args, say)
    cache = session.size_model.size_cache
    influence = block_influence(loaded.model, loaded.info, session.calibration.calibration.token_ids)
    shortgpt = shortgpt_config(influence, args.drop)
    shortgpt_kl = session.evaluator.evaluate(shortgpt, FINAL_STAGE)
    session.evaluator.restore()
    short = export_and_measure(loaded, shortgpt, run_dir / "export_shortgpt", texts, args, size_cache=cache,
                               result_path=run_dir / "export_shortgpt.json")
    say(f"shortgpt drops {sorted(int(i) for i in shortgpt.drops)}: KL {shortgpt_kl:.4f}, {short['ppl']}")
    session, result = search_until(spec, run_dir, args, deadline, say, session=session)
    chosen = best_to_export(session, result, say)
    if chosen is None:
        return None
    best, kl, complete = chosen
    evop = export_and_measure(loaded, best, run_dir / "export_evop", texts, args, size_cache=cache,
                              result_path=run_dir / "export_evop.json")
    data = {"seed": seed, "drop": args.drop, "influence": [float(x) for x in influence], "complete": complete,
            "evop": {**evop, "kl": kl, "dropped": sorted(int(i) for i in best.drops),
                     "evaluations": len(session.store), "search_seconds": session.loop_seconds},
            "shortgpt": {**short, "kl": shortgpt_kl, "dropped": sorted(int(i) for i in shortgpt.drops)}}
    path = result_path(args.out, label)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)
    say(f"{'' if complete else 'stopped by the deadline, best so far: '}evop drops {data['evop']['dropped']} "
        f"{evop['ppl']}; shortgpt drops {data['shortgpt']['dropped']} {short['ppl']}")
    return data if complete else None


def render(out: Path, dense: dict, budget: int, args) -> tuple[dict, str]:
    rows = [json.loads(p.read_text()) for p in sorted((out / "results").glob("s*.json"))]
    seeds = ",".join(f"{r['seed']}{'' if r.get('complete', True) else '*'}" for r in rows)
    lines = [f"{args.drop} of the model's layers removed, the rest bf16; budget {budget:,} bytes; evop: "
             f"{args.generations} generations × {args.population}, stages {args.stages or 'screen/full'}, calibration "
             f"{args.samples} × {args.seq_len}; held-out PPL on ≤ {args.max_tokens:,} tokens", "",
             "| method | seeds | evaluations | KL (calibration) | WikiText-2 PPL | C4 PPL | layers dropped |",
             "|---|---|---|---|---|---|---|",
             f"| dense | – | – | 0 | {dense['wikitext2']:.2f} | {dense['c4']:.2f} | – |"]
    for method in ("evop", "shortgpt"):
        if rows:
            evaluations = ",".join(str(r[method]["evaluations"]) for r in rows) if method == "evop" else "–"
            lines.append(f"| {method} | {seeds} | {evaluations} | "
                         f"{mean_std([r[method]['kl'] for r in rows])} | "
                         f"{mean_std([r[method]['ppl']['wikitext2'] for r in rows])} | "
                         f"{mean_std([r[method]['ppl']['c4'] for r in rows])} | "
                         + "; ".join(",".join(map(str, r[method]["dropped"])) for r in rows) + " |")
    lines += deadline_note(rows)
    return {"dense": dense, "budget_bytes": budget, "runs": rows}, "\n".join(lines)


def prepare(args, out: Path, say) -> dict:
    """What every seed shares, computed once in this process: the budget (the dense bf16 artifact's
    bytes less one), the space file, the size table, the tokenized held-out texts, the dense PPL
    ({"budget", "space", "dense"})."""
    from evo.baselines import uniform_config
    from evo.compress.size import SizeCache, SizeModel

    loaded = load_experiment_model(args)
    space = space_file(out, args.drop)
    work = work_dir(args)
    prefill_size_table(loaded, str(space), work, workers=args.size_workers, say=say)  # the budget's sizes among them
    budget_path = out / "budget.json"
    if not budget_path.exists():
        dense_bytes = SizeModel.for_model(loaded, SizeCache(work / SIZE_CACHE_DIR)).artifact_bytes(
            uniform_config(16, embedding_bits=16))
        write_json(budget_path, {"dense_bf16_bytes": int(dense_bytes), "budget_bytes": int(dense_bytes) - 1})
    budget = int(json.loads(budget_path.read_text())["budget_bytes"])
    texts = cached_eval_texts(loaded.tokenizer, work, domains=False)
    dense_path = out / "dense_ppl.json"
    if not dense_path.exists():
        write_json(dense_path, perplexities(loaded.model, texts, args.max_tokens))
    return {"budget": budget, "space": space, "dense": json.loads(dense_path.read_text())}


def main(argv: list[str] | None = None) -> int:
    parser = experiment_parser(__doc__)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--drop", type=int, default=8, help="layers removed (8 of 30 = 25 %% depth)")
    parser.add_argument("--generations", type=int, default=30)
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--stages", default="2048,16384:16,32768:8", help="'' for the two-stage default")
    args = parse_with_smoke(parser, SMOKE, argv)
    args.out = args.out or "runs/evop_vs_shortgpt"
    seeds = {f"s{seed}": seed for seed in (int(s) for s in args.seeds.split(",") if s)}

    def job(label: str, loaded, shared: dict, texts, deadline: Deadline) -> dict | None:
        return run_seed(loaded, args, seeds[label], shared["budget"], shared["space"], texts, deadline)

    return run_experiment(Path(__file__), "evop_vs_shortgpt", args, argv, list(seeds),
                          prepare=prepare, render=render, job=job, domains=False)


if __name__ == "__main__":
    raise SystemExit(main())
