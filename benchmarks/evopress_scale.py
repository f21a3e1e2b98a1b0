"""An EvoPress-scale search (issue 19): ≥ 20,000 evaluations with growing stages (2k → 16k → 64 × 512
tokens, the survivors re-scored) at the uniform 3-bit RTN budget, the held-out WikiText-2 and C4
perplexity of its export against the dense model and uniform 3-bit RTN, and `evo report`'s
convergence plot.

  # on one H200: session 26 ran 20,128 evaluations in 297 s of loop (67.7/s, CUDA graphs) and exported,
  # all in one 435 s call (benchmarks/results/evopress_scale_h200.md); a call stopped by --deadline-s
  # resumes with the same command:
  python benchmarks/evopress_scale.py --device cuda --compile reduce-overhead --size-workers 16 \\
      --evaluations 20000 --population 64 --samples 64 --seq-len 512 --stages 2048,16384:16,32768:8 \\
      --deadline-s 500 --out runs/evopress_scale
  # a call that must end with an export whatever it reached: as many evaluations as fit, then the export
  # of the best of the last finished generation and its WikiText-2/C4 perplexity (the same command
  # resumes the search, each call exporting its own best):
  python3 benchmarks/evopress_scale.py --device cuda --compile reduce-overhead --size-workers 16 \
      --evaluations 20000 --population 64 --samples 64 --seq-len 512 --stages 2048,16384:16,32768:8 \
      --deadline-s 450 --reserve-s 150 --export-partial --out runs/evopress_scale
  # CPU smoke (a few minutes on 2 cores); with --evaluations 3000 --deadline-s 60 --reserve-s 25
  # --export-partial it stops, resumes and exports a partial run:
  python benchmarks/evopress_scale.py --smoke

The generations are the fewest whose planned evaluations (the engine's count: every offspring on
stage 1, the survivors on the later stages) reach --evaluations. EvoPress's own default: 150
generations × ~150 candidates ≈ 22,000 evaluations, stages of 2k / 16k / 131k tokens.
Writes OUT/evopress_scale.json and .md, OUT/report/ (evo report) and OUT/calls.json (per call: its wall
time with setup, the search loop's time, the evaluations it added, and apart from the loop the size
table + level database's time and the warm-up's: one evaluation per stage shape, torch.compile's
compilation and CUDA-graph capture; the run's time is the sum).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from _experiments import (
    Deadline,
    add_common_options,
    convergence_report,
    eval_texts,
    export_and_measure,
    open_run,
    parse_with_smoke,
    perplexities,
    say_as,
    search_until,
    share_loaded_models,
    uniform_budget,
    write_outputs,
)
from _searchbench import write_json
from evo.constants import FINAL_STAGE, MB, SCREEN_STAGE

SMOKE = ["--device", "cpu", "--space", "bits", "--evaluations", "30", "--population", "4", "--samples", "4",
         "--seq-len", "64", "--stages", "64,128:2,256:1", "--max-tokens", "512", "--size-workers", "1",
         "--deadline-s", "420", "--reserve-s", "60", "--out", "runs/evopress_scale-smoke"]


def generations_for(spec, evaluations: int) -> int:
    from evo.search.loop import evaluations_planned

    generations = 0
    while evaluations_planned(dataclasses.replace(spec, generations=generations)) < evaluations:
        generations += 1
    return generations


def prepare_loop(session, size_workers: int | None, say) -> tuple[float, float]:
    """What the search loop would otherwise do inside its time, done before it and timed apart: the
    size table and level database (fill_size_table; run_search then finds them), and one evaluation
    at every stage shape (torch.compile's compilation and CUDA-graph capture). Returns (table seconds,
    warm-up seconds)."""
    import torch

    tic = time.perf_counter()
    session.fill_size_table(workers=size_workers)
    table_seconds = time.perf_counter() - tic
    evaluator = session.evaluator
    warm = session.config_of([0] * len(session.genes))
    tic = time.perf_counter()
    for stage in sorted(set(evaluator.stage_shapes) | {SCREEN_STAGE, FINAL_STAGE}):
        evaluator.evaluate(warm, stage)
    if evaluator.device.type == "cuda":
        torch.cuda.synchronize(evaluator.device)
    warmup_seconds = time.perf_counter() - tic
    evaluator.restore()
    say(f"size table + level database {table_seconds:.1f} s, warm-up (compile {evaluator.fitness.compile}) "
        f"{warmup_seconds:.1f} s: outside the search loop's time")
    return table_seconds, warmup_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser)
    parser.add_argument("--space", default="default")
    parser.add_argument("--evaluations", type=int, default=20000, help="planned evaluations (sets --generations)")
    parser.add_argument("--population", type=int, default=64)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--stages", default="2048,16384:16,32768:8")
    parser.add_argument("--bits", type=int, default=3, help="the budget: bytes of the uniform RTN artifact of these bits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export-partial", action="store_true", help="when the deadline stops the search, "
                        "export and measure the best of its last finished generation now (one device call; the "
                        "same command without it resumes the search towards --evaluations)")
    args = parse_with_smoke(parser, SMOKE, argv)
    args.out = args.out or "runs/evopress_scale"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = Deadline(args.deadline_s)
    say = say_as("evopress")
    share_loaded_models()
    from evo.modelio import auto_dtype_name, load_model
    from evo.search.loop import SearchSpec, evaluations_planned
    from evo.search.schedule import parse_stages

    loaded = load_model(args.model, dtype=auto_dtype_name(args.device), device=args.device, trust_remote_code=False)
    budget = uniform_budget(loaded, out, args.bits)
    stages = parse_stages(args.stages)
    spec = SearchSpec(budget_bytes=budget, model=args.model, space=args.space, population=args.population,
                      samples=args.samples, seq_len=args.seq_len, clusters=min(8, args.samples),
                      screen_sequences=1, screen_tokens=min(128, args.seq_len), stages=stages, seed=args.seed)
    spec = dataclasses.replace(spec, generations=generations_for(spec, args.evaluations))
    planned = evaluations_planned(spec)
    say(f"budget {budget / MB:.3f} MB (uniform {args.bits}-bit RTN); {spec.generations} generations × "
        f"{spec.population} = {planned} planned evaluations, stages {args.stages}")

    run_dir = out / "search"
    calls_path = out / "calls.json"
    calls = json.loads(calls_path.read_text()) if calls_path.exists() else []
    before = sum(1 for _ in (run_dir / "journal.jsonl").open()) if (run_dir / "journal.jsonl").exists() else 0
    tic = time.perf_counter()
    session = open_run(spec, run_dir, args, say)
    table_seconds, warmup_seconds = prepare_loop(session, args.size_workers, say)
    session, result = search_until(spec, run_dir, args, deadline, say, session=session)
    calls.append({"call_seconds": time.perf_counter() - tic, "search_seconds": session.loop_seconds,
                  "table_seconds": table_seconds, "warmup_seconds": warmup_seconds,
                  "evaluations": len(session.store) - before, "device": args.device, "compile": args.compile})
    write_json(calls_path, calls)
    if result is None:
        print(f"{len(session.store)} of {planned} evaluations done; run the same command again to continue")
        if not args.export_partial:
            return 0
        best, _ = session.store.choose(budget)  # the front of the last finished generation
    else:
        best = result.best

    texts = eval_texts(loaded.tokenizer, domains=False)
    from evo.baselines import uniform_config
    from evo.compress.config import CompressionConfig

    model_ppl_path = out / "dense_ppl.json"
    if not model_ppl_path.exists():
        write_json(model_ppl_path, perplexities(loaded.model, texts, args.max_tokens))
    dense = json.loads(model_ppl_path.read_text())
    cache = session.size_model.size_cache
    uniform = export_and_measure(loaded, uniform_config(args.bits), out / "artifacts" / f"uniform{args.bits}", texts,
                                 args, size_cache=cache, result_path=out / f"uniform{args.bits}.json")
    best_config = CompressionConfig.from_dict(best.config)
    # a partial export is named by its evaluation count: a later call exports its own best, never this one's
    name = "evo" if result is not None else f"evo-partial-{len(session.store)}"
    evo = export_and_measure(loaded, best_config, out / "artifacts" / name, texts, args,
                             stats=session.activation_stats, size_cache=cache, result_path=out / f"{name}_export.json")
    uniform_kl = session.evaluator.evaluate(uniform_config(args.bits), FINAL_STAGE)
    session.evaluator.restore()
    report_files = convergence_report(run_dir, out / "report")
    search_seconds = sum(c["search_seconds"] for c in calls)
    setup_seconds = sum(c.get("table_seconds", 0.0) for c in calls)
    warmup_total = sum(c.get("warmup_seconds", 0.0) for c in calls)
    by_stage: dict[int, int] = {}
    for line in (run_dir / "journal.jsonl").read_text().splitlines():
        stage = json.loads(line)["stage"]
        by_stage[stage] = by_stage.get(stage, 0) + 1
    data = {"budget_bytes": budget, "spec": spec.to_dict(), "evaluations": len(session.store),
            "evaluations_by_stage": by_stage, "search_seconds": search_seconds, "table_seconds": setup_seconds,
            "warmup_seconds": warmup_total, "calls": calls,
            "evals_per_second": len(session.store) / search_seconds if search_seconds else None,
            "dense": {"ppl": dense}, f"uniform{args.bits}": {**uniform, "kl": uniform_kl},
            "evo": {**evo, "kl": best.quality, "recorded_bytes": best.size_bytes},
            "finished": result is not None,
            "report_files": report_files}
    lines = [f"{loaded.info.model_id}, budget = uniform {args.bits}-bit RTN = {budget:,} bytes; space {args.space}; "
             f"{len(session.store):,} evaluations ({', '.join(f'stage {s}: {n:,}' for s, n in sorted(by_stage.items()))}) "
             f"in {search_seconds:.0f} s of search loop over {len(calls)} call(s) ({data['evals_per_second']:.1f}/s; "
             f"besides it {setup_seconds:.0f} s of size table + level database and {warmup_total:.0f} s of warm-up "
             f"with compile {args.compile}) "
             f"on {args.device}; held-out perplexity on ≤ {args.max_tokens:,} tokens, {min(512, args.max_tokens)}-token windows",
             "", "| model | bytes | KL (calibration) | WikiText-2 PPL | C4 PPL |", "|---|---|---|---|---|",
             f"| dense | – | 0 | {dense['wikitext2']:.2f} | {dense['c4']:.2f} |",
             f"| uniform {args.bits}-bit RTN | {uniform['bytes']:,} | {uniform_kl:.4f} | {uniform['ppl']['wikitext2']:.2f} "
             f"| {uniform['ppl']['c4']:.2f} |",
             f"| evo, {len(session.store):,} evaluations{'' if result else ' (stopped by the deadline)'} "
             f"| {evo['bytes']:,} | {best.quality:.4f} "
             f"| {evo['ppl']['wikitext2']:.2f} | {evo['ppl']['c4']:.2f} |", "",
             "convergence plot and report: " + ", ".join(report_files)]
    write_outputs(out, "evopress_scale", data, "\n".join(lines), [Path(sys.argv[0]).name, *(argv or sys.argv[1:])])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
