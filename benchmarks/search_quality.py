"""Search quality on the default model: evo's DEAP search against uniform RTN and random search at
the bytes of uniform 3-bit, and EvoP layer removal against ShortGPT at equal layers removed.

    python benchmarks/search_quality.py --device cuda --seeds 3 --generations 8 --population 16 \
        --out runs/search_quality [--jobs 4] [--skip-evop] [--space default|FILE] [--quantizer rtn|mse|gptq] \
        [--skip-random] [--c4] [--deadline-s S --reserve-s R]

    # issue 18 on one H200 in one call (gptq space, three seeds side by side, stopped by the deadline; the
    # budget is issue 18's uniform 3-bit figure, so the baselines run as a fourth job beside the seeds):
    python benchmarks/search_quality.py --device cuda --space gptq --seeds 3 --jobs 4 --generations 40 \
        --population 16 --skip-evop --skip-random --c4 --budget-bytes 66397058 --deadline-s 530 \
        --reserve-s 110 --out runs/sq-gptq

    # issue 18's llama.cpp comparison: one search per distinct file size in the JSON (a call of its own)
    python benchmarks/search_quality.py --device cuda --space gptq --seeds 0 --jobs 6 --generations 40 \
        --population 16 --skip-evop --llamacpp-sizes benchmarks/results/gguf_vs_llamacpp_h200.json \
        --deadline-s 530 --reserve-s 110 --out runs/sq-llamacpp

    # more seeds at sizes already run: seeds 0-2, the seed-0 results of an earlier call reused (not run again)
    python benchmarks/search_quality.py --device cuda --space gptq --seeds 0 --size-seeds 3 --jobs 13 \
        --generations 40 --population 16 --skip-evop --llamacpp-sizes benchmarks/results/gguf_vs_llamacpp_h200.json \
        --budgets-bytes 74046272,79354688,88202048,91298624,93510464 \
        --extra-results benchmarks/results/sq_llamacpp_seed0 --deadline-s 440 --reserve-s 120 --out runs/sq-llamacpp3

What it runs (every search in its own run directory under --out, so a second call resumes):
  baselines  uniform 3-bit and 4-bit RTN (g128, asymmetric; embedding 8-bit g128) written as
             artifacts; the 3-bit artifact's bytes on disk are the seeds' budget unless --budget-bytes
             is given (then the baselines run beside the searches, as one more --jobs job).
  seedS      evo's DEAP search (--space, default `default`; --quantizer sets its quantizer) at that budget, then random search given exactly
             as many evaluations as the DEAP run's journal holds. DEAP's count includes its cheap
             stage-1 screens (a few sequences × 128 tokens) while every random evaluation is a
             full one, which favours random search. Both share the seed's CCDS calibration set.
  bBYTES-sS  with --llamacpp-sizes FILE.json (gguf_vs_llamacpp.py's or llamacpp_peer.py's results) or
             --budgets-bytes B1,B2: evo's DEAP search at each budget (one seed by default, --size-seeds),
             its artifact (bytes <= the budget) against the best llama.cpp file of that size or larger,
             WikiText-2 and C4 PPL (issue 18's comparison at equal file bytes; the GGUFs' PPLs from the JSON).
             At a budget the space's largest artifact fits (evo refuses to search it: "everything fits"),
             that artifact is the answer: exported and scored, 0 evaluations, marked in the table.
             --extra-results DIR: size jobs an earlier call finished (b{BYTES}-s{SEED}.json) join the table.
  evop       EvoP (space `evop`: 3 whole layers removed, bf16 otherwise, budget just under the
             dense artifact) and ShortGPT's 3 layers of lowest block influence on the same
             calibration tokens.
Every compared model is written as an artifact and reloaded with evo.compress.artifact.load; its WikiText-2
perplexity is measured on --max-tokens tokens in 512-token windows, its calibration KL by the
run's own evaluator at the final stage. Seeds change the calibration draw and the search.
With --jobs N the seeds and evop run in N processes sharing the GPU and one size cache.
--deadline-s: every search stops --reserve-s before the call's deadline and exports the best full
evaluation under the budget in its journal ("finished: deadline" in the table); jobs still running 30 s
after the deadline are stopped, and the table shows the seeds that finished (the same command resumes
the rest). A job that fails is shown in the table (its log's last line); the others are still rendered,
and the call then exits non-zero. --skip-random drops the random-search comparison; --c4 adds C4 validation perplexity. The
table says per seed what the search spent its bytes on: embedding width and quantizer, bits per layer
and per role, drops, rescale and sparsity.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from _searchbench import (
    UNFINISHED_EXIT,
    Unfinished,
    best_journaled,
    c4_ids,
    common_argv,
    MB,
    SEQ_LEN,
    UNIFORM_HIGH,
    UNIFORM_LOW,
    describe_choice,
    free_gpu,
    job_baselines,
    journal,
    mean_std,
    read_baselines,
    run_job,
    run_parallel,
    say_as,
    search,
    wikitext_ids,
    write_and_measure,
    write_json,
)
from evo.baselines import block_influence, shortgpt_config, uniform_config
from evo.compress.config import CompressionConfig
from evo.constants import FINAL_STAGE
from evo.errors import EvoError
from evo.search.loop import SearchSpec
from evo.search.space import SearchSpace


def job_seed(args, seed: int) -> dict:
    """evo's search at uniform 3-bit RTN's bytes or --budget-bytes (then random search, unless --skip-random)."""
    return search_job(args, f"seed{seed}", seed, seed_budget(args), compare=True)


def seed_budget(args) -> int:
    """--budget-bytes, else the uniform 3-bit artifact's bytes on disk (the baselines job's)."""
    return args.budget_bytes or read_baselines(args)[f"uniform{UNIFORM_LOW}"]["bytes"]


def job_size(args, name: str) -> dict:
    """evo's search at a llama.cpp file's bytes (name b{BYTES}-s{SEED}): only the DEAP search; at a
    budget the space's largest artifact fits, that artifact (what a search would return; evo refuses it)."""
    budget, seed = parse_size_job(name)
    try:
        return search_job(args, name, seed, budget, compare=False)
    except EvoError:
        free_gpu()
        largest = largest_if_everything_fits(args, name, seed, budget)
        if largest is None:
            raise  # refused for another reason (e.g. below the smallest artifact): the job fails
        return largest


def search_spec(args, seed: int, budget: int) -> SearchSpec:
    return SearchSpec(budget_bytes=budget, model=args.model, space=space_spec(args), engine="deap",
                      generations=args.generations, population=args.population, seed=seed)


def largest_if_everything_fits(args, name: str, seed: int, budget: int) -> dict | None:
    """After evo refused a budget: when it is at or above the space's largest artifact ("everything fits,
    nothing to search", from make_problem or the early check), that artifact is the answer. This draws
    the seed's CCDS set, statistics and Hessians as open_session does, sizes the space's largest config
    (evo.search.budget.extreme_configs: the config of make_problem's largest genome) with the size model
    and, when the budget holds it, exports and scores it: a result with 0 evaluations. None otherwise."""
    from evo.compress.plan import config_needs_hessians
    from evo.compress.size import SizeCache, SizeModel
    from evo.constants import CALIBRATION_FILE, SIZE_CACHE_DIR
    from evo.data.calibset import CalibrationSet
    from evo.data.ccds import CalibrationConfig, build_calibration_set
    from evo.data.corpus import read_corpus
    from evo.evaluate.hessian import load_or_collect
    from evo.evaluate.stats import collect_activation_stats
    from evo.modelio import auto_dtype_name, load_model
    from evo.search.budget import extreme_configs
    from evo.search.loop import ccds_candidates

    say = say_as(name)
    spec = search_spec(args, seed, budget)
    space = SearchSpace.load(spec.space)
    # EvoP's fixed drops are searched at any budget; a GGUF space's artifacts are not written here
    if space.fixed_drops is not None or getattr(space, "format", None) == "gguf":
        return None
    prepared = Path(args.out) / name / "largest"
    tic = time.perf_counter()
    loaded = load_model(args.model, dtype=auto_dtype_name(args.device), device=args.device)
    largest = extreme_configs(space, loaded.info)[1]
    say("evo refused the budget: sizing the space's largest artifact on the seed's calibration set")
    prepared.mkdir(parents=True, exist_ok=True)
    drawn = [p for p in (prepared / CALIBRATION_FILE, Path(args.out) / name / "deap" / CALIBRATION_FILE) if p.exists()]
    if drawn:  # the refused run's own draw (a refusal by make_problem leaves it), or this function's
        calibration = CalibrationSet.load(drawn[0])
    else:
        config = CalibrationConfig(samples=spec.samples, clusters=spec.clusters, heldout=spec.samples,
                                   seq_len=spec.seq_len, seed=spec.seed, max_candidates=ccds_candidates(spec.samples))
        calibration = build_calibration_set(loaded, read_corpus(list(spec.corpus)), config)
        calibration.save(prepared / CALIBRATION_FILE)
    tokens = calibration.calibration.token_ids
    stats = collect_activation_stats(loaded.model, loaded.info, tokens)
    hessians = (load_or_collect(prepared / "hessians", loaded.model, loaded.info, tokens)
                if config_needs_hessians(largest, loaded.info) else None)
    size_model = SizeModel.for_model(loaded, SizeCache(Path(args.out) / SIZE_CACHE_DIR), stats=stats)
    size_model.hessians = hessians
    largest_bytes = size_model.artifact_bytes(largest)
    if budget < largest_bytes:
        say(f"the space's largest artifact is {largest_bytes:,} bytes, over the budget: not that case")
        return None
    say(f"budget {budget:,} bytes >= the space's largest artifact, {largest_bytes:,} bytes: everything fits, "
        "so the answer is that artifact (every gene at its maximum); exporting it")
    ids = wikitext_ids(loaded.tokenizer)
    more = {"c4": c4_ids(loaded.tokenizer)} if args.c4 else None
    measured = write_and_measure(loaded, largest, prepared / "export", ids, args, stats=stats,
                                 size_cache=size_model.size_cache, hessians=hessians, more=more)
    if measured["bytes"] > budget:
        raise RuntimeError(f"{name}: the largest artifact was sized {largest_bytes:,} bytes but written as "
                           f"{measured['bytes']:,}, over the budget {budget:,}")
    say(f"largest artifact: {measured['bytes']:,} bytes, PPL {measured['ppl']:.3f}")
    result = {"seed": seed, "budget_bytes": budget, "space": spec.space, "model": spec.model,
              "generations": spec.generations, "population": spec.population, "largest_bytes": largest_bytes}
    result["deap"] = {**measured, "kl": None, "recorded_bytes": largest_bytes, "finished": True, "largest": True,
                      "evaluations": 0, "seconds": time.perf_counter() - tic, "stage1": 0, "stage2": 0,
                      "choice": describe_choice(largest, loaded.info), "config": largest.to_dict()}
    return result


def seed_list(text: str) -> tuple[int, ...]:
    """--size-seeds: "3" is seeds 0, 1, 2; "1,2" is those seeds."""
    try:
        seeds = tuple(range(int(text))) if "," not in text else tuple(int(part) for part in text.split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a count (3) or a comma list of seeds (1,2)") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: give a count >= 1 or distinct seeds >= 0")
    return seeds


def size_job_name(budget: int, seed: int) -> str:
    return f"b{budget}-s{seed}"


def parse_size_job(name: str) -> tuple[int, int]:
    budget, seed = name[1:].split("-s")
    return int(budget), int(seed)


def search_job(args, name: str, seed: int, budget: int, *, compare: bool) -> dict:
    """DEAP search at `budget` bytes in run directory --out/NAME, its best exported and measured;
    with `compare`, the uniform 3/4-bit calibration KLs and the random search too."""
    say = say_as(name)
    out = Path(args.out) / name
    spec = search_spec(args, seed, budget)
    result: dict = {"seed": seed, "budget_bytes": budget, "space": spec.space, "model": spec.model,
                    "generations": spec.generations, "population": spec.population}
    # keep --reserve-s for the export and perplexities of the best found (and the random search's)
    stop = args.deadline_at - args.reserve_s if args.deadline_at else None

    session, deap, seconds = search(spec, out / "deap", args, say_as(f"{name} deap"), deadline_at=stop)
    ids = wikitext_ids(session.loaded.tokenizer)
    more = {"c4": c4_ids(session.loaded.tokenizer)} if args.c4 else None
    if compare:
        for bits in (UNIFORM_LOW, UNIFORM_HIGH):
            result[f"uniform{bits}_kl"] = session.evaluator.evaluate(uniform_config(bits), FINAL_STAGE)
        session.evaluator.restore()
    if deap is not None:
        found = (deap.best.config, deap.best.quality, deap.best.size_bytes)
    else:
        found = best_journaled(session)
        if found is None:
            raise Unfinished(f"{name}: the deadline came before any full evaluation under the budget")
    best = CompressionConfig.from_dict(found[0])
    measured = write_and_measure(session.loaded, best, out / "deap" / "export", ids, args,
                                  stats=session.activation_stats, size_cache=session.size_model.size_cache,
                                  hessians=session.hessians, more=more)
    entries = journal(out / "deap")
    evaluations = len(entries)
    result["deap"] = {**measured, "kl": found[1], "recorded_bytes": found[2], "finished": deap is not None,
                      "evaluations": evaluations, "seconds": seconds,
                      "stage1": sum(1 for e in entries if e["stage"] == 1),
                      "stage2": sum(1 for e in entries if e["stage"] == 2),
                      "choice": describe_choice(best, session.loaded.info), "config": found[0]}
    say(f"deap best: KL {found[1]:.4f}, {measured['bytes']:,} bytes, PPL {measured['ppl']:.3f}"
        + ("" if deap is not None else " (stopped by the deadline)"))
    del session
    free_gpu()
    if args.skip_random or not compare:
        return result

    # exactly the DEAP run's number of evaluations, all of them full ones, in one batch
    random_spec = dataclasses.replace(spec, engine="random", population=evaluations, generations=0)
    session, rand, seconds = search(random_spec, out / "random", args, say_as(f"{name} random"),
                                     share_from=out / "deap", deadline_at=stop)
    found = (rand.best.config, rand.best.quality, rand.best.size_bytes) if rand is not None else best_journaled(session)
    if found is None:
        say("random search: stopped by the deadline before a full evaluation under the budget")
        return result
    best = CompressionConfig.from_dict(found[0])
    measured = write_and_measure(session.loaded, best, out / "random" / "export", ids, args,
                                  stats=session.activation_stats, size_cache=session.size_model.size_cache,
                                  hessians=session.hessians, more=more)
    result["random"] = {**measured, "kl": found[1], "recorded_bytes": found[2], "finished": rand is not None,
                        "evaluations": len(journal(out / "random")), "seconds": seconds,
                        "choice": describe_choice(best, session.loaded.info)}
    say(f"random best: KL {found[1]:.4f}, {measured['bytes']:,} bytes, PPL {measured['ppl']:.3f}")
    del session
    free_gpu()
    return result


def job_evop(args, baselines: dict) -> dict:
    say = say_as("evop")
    out = Path(args.out) / "evop"
    space = SearchSpace.load("evop")
    # every choice of fixed_drops layers fits: the comparison is at equal layers removed
    budget = baselines["dense"]["bytes"] - 1
    spec = SearchSpec(budget_bytes=budget, model=args.model, space="evop", engine="deap",
                      generations=args.generations, population=args.population, seed=0)
    session, evop, seconds = search(spec, out / "search", args, say)
    info = session.loaded.info
    ids = wikitext_ids(session.loaded.tokenizer)
    tokens = session.calibration.calibration.token_ids
    influence = block_influence(session.loaded.model, info, tokens)
    shortgpt = shortgpt_config(influence, space.fixed_drops)
    shortgpt_kl = session.evaluator.evaluate(shortgpt, FINAL_STAGE)
    session.evaluator.restore()
    best = CompressionConfig.from_dict(evop.best.config)
    result = {"layers_removed": space.fixed_drops, "budget_bytes": budget,
              "influence": [float(x) for x in influence]}
    result["evop"] = {**write_and_measure(session.loaded, best, out / "export_evop", ids, args,
                                           size_cache=session.size_model.size_cache),
                      "kl": evop.best.quality, "dropped": sorted(int(i) for i in best.drops),
                      "evaluations": len(journal(out / "search")), "seconds": seconds}
    result["shortgpt"] = {**write_and_measure(session.loaded, shortgpt, out / "export_shortgpt", ids, args,
                                               size_cache=session.size_model.size_cache),
                          "kl": shortgpt_kl, "dropped": sorted(int(i) for i in shortgpt.drops)}
    say(f"evop drops {result['evop']['dropped']} PPL {result['evop']['ppl']:.3f}; "
        f"shortgpt drops {result['shortgpt']['dropped']} PPL {result['shortgpt']['ppl']:.3f}")
    return result


def render(args, baselines: dict, seeds: list[dict], evop: dict | None) -> str:
    lines = []
    u_lo, u_hi = baselines[f"uniform{UNIFORM_LOW}"], baselines[f"uniform{UNIFORM_HIGH}"]
    n = len(seeds)
    budget = seeds[0]["budget_bytes"]
    c4 = all("ppl_c4" in s["deap"] for s in seeds)
    methods = [("deap", "evo DEAP (NSGA-II, two-stage)")]
    if all("random" in s for s in seeds):
        methods.insert(0, ("random", "random search"))
    named = (f"uniform {UNIFORM_LOW}-bit artifact = {budget:,} bytes" if budget == u_lo["bytes"] else
             f"{budget:,} bytes (--budget-bytes; the uniform {UNIFORM_LOW}-bit artifact is {u_lo['bytes']:,})")
    lines.append(f"SmolLM2-135M ({baselines['model']}), budget = {named}; "
                 f"space {seeds[0].get('space', args.space)}; "
                 f"WikiText-2 test PPL over {baselines['wikitext_tokens']:,} tokens ({SEQ_LEN}-token windows)"
                 + (", C4 validation the same" if c4 else "") + "; "
                 f"calibration KL (nats/token, each seed's CCDS set, final stage); {n} seed(s) "
                 f"({', '.join(str(s['seed']) for s in seeds)}), mean ± std")
    header = f"{'method':<34} {'MB':>16} {'WikiText-2 PPL':>18} {'calib KL':>18} {'evaluations':>22}"
    lines += [header, "-" * len(header)]

    def row(name, mb, ppl, kl, evals):
        lines.append(f"{name:<34} {mb:>16} {ppl:>18} {kl:>18} {evals:>22}")

    row("dense (bf16)", f"{baselines['dense']['bytes'] / MB:.3f}", f"{baselines['dense']['ppl']:.4g}", "0", "-")
    row(f"uniform {UNIFORM_HIGH}-bit RTN g128 (own size)", f"{u_hi['bytes'] / MB:.3f}", f"{u_hi['ppl']:.4g}",
        mean_std([s[f"uniform{UNIFORM_HIGH}_kl"] for s in seeds]), "-")
    row(f"uniform {UNIFORM_LOW}-bit RTN g128" + (" (budget)" if budget == u_lo["bytes"] else " (own size)"), f"{u_lo['bytes'] / MB:.3f}", f"{u_lo['ppl']:.4g}",
        mean_std([s[f"uniform{UNIFORM_LOW}_kl"] for s in seeds]), "-")
    for key, name in methods:
        evals = [s[key]["evaluations"] for s in seeds]
        detail = f"{int(np.mean(evals))}"
        if key == "deap":
            detail += f" ({int(np.mean([s['deap']['stage2'] for s in seeds]))} full)"
        else:
            detail += " (all full)"
        row(name, mean_std([s[key]["bytes"] / MB for s in seeds]), mean_std([s[key]["ppl"] for s in seeds]),
            mean_std([s[key]["kl"] for s in seeds]), detail)
    if c4 and "ppl_c4" in u_lo:
        lines.append(f"C4 PPL: dense {baselines['dense']['ppl_c4']:.4g}, uniform {UNIFORM_HIGH}-bit {u_hi['ppl_c4']:.4g}, "
                     f"uniform {UNIFORM_LOW}-bit {u_lo['ppl_c4']:.4g}, evo DEAP "
                     f"{mean_std([s['deap']['ppl_c4'] for s in seeds])}")
    lines.append("")
    evo_ppl = np.array([s["deap"]["ppl"] for s in seeds])
    evo_kl = np.array([s["deap"]["kl"] for s in seeds])
    lo_kl = np.array([s[f"uniform{UNIFORM_LOW}_kl"] for s in seeds])
    hi_kl = np.array([s[f"uniform{UNIFORM_HIGH}_kl"] for s in seeds])
    lines.append("ratios (per seed, then mean ± std)           PPL                KL")
    lines.append(f"  evo / uniform {UNIFORM_LOW}-bit                  {mean_std(evo_ppl / u_lo['ppl']):>18} "
                 f"{mean_std(evo_kl / lo_kl):>18}")
    if methods[0][0] == "random":
        rnd_ppl = np.array([s["random"]["ppl"] for s in seeds])
        rnd_kl = np.array([s["random"]["kl"] for s in seeds])
        lines.append(f"  evo / random search                  {mean_std(evo_ppl / rnd_ppl):>18} "
                     f"{mean_std(evo_kl / rnd_kl):>18}")
    lines.append(f"  evo / uniform {UNIFORM_HIGH}-bit (larger)         {mean_std(evo_ppl / u_hi['ppl']):>18} "
                 f"{mean_std(evo_kl / hi_kl):>18}")
    gap = (u_lo["ppl"] - evo_ppl) / (u_lo["ppl"] - u_hi["ppl"])
    gap_kl = (lo_kl - evo_kl) / (lo_kl - hi_kl)
    lines.append(f"  share of the {UNIFORM_LOW}→{UNIFORM_HIGH}-bit gap evo closes      {mean_std(gap):>18} "
                 f"{mean_std(gap_kl):>18}")
    lines.append(f"  seeds at or below uniform {UNIFORM_HIGH}-bit RTN's WikiText-2 PPL ({u_hi['ppl']:.3f}): "
                 f"{int((evo_ppl <= u_hi['ppl']).sum())} of {n}")
    if methods[0][0] == "random":
        lines.append("  (random search gets as many evaluations as DEAP's journal holds; DEAP's include cheap stage-1 "
                     "screens, so random gets more full evaluations)")
    lines.append("")
    lines.append("per seed     method   bytes        MB   wiki PPL" + ("     C4 PPL" if c4 else "")
                 + "   calib KL  evals  seconds  finished")
    for s in seeds:
        for key, _ in methods:
            d = s[key]
            lines.append(f"  seed {s['seed']:<5} {key:<7} {d['bytes']:>11,} {d['bytes'] / MB:>9.4f} {d['ppl']:>10.3f}"
                         + (f" {d['ppl_c4']:>10.3f}" if c4 else "")
                         + f" {d['kl']:>10.4f} {d['evaluations']:>6} {d['seconds']:>8.0f}  "
                         f"{'yes' if d.get('finished', True) else 'deadline'}")
    lines.append("")
    lines.append("what the search spent its bytes on (attention / MLP bits per layer 0..29, '-' = dropped;"
                 " per role: bits → count of the 30 layers' tensors):")
    for s in seeds:
        for key, _ in methods:
            c = s[key]["choice"]
            lines.append(f"  seed {s['seed']} {key:<6} emb {c['embedding_bits']}b {c.get('embedding_quantizer', 'rtn')},"
                         f" mean linear {c['mean_linear_bits']:.2f}b, drops {c['drops'] or 'none'},"
                         f" sparse units {c['sparse_units']}/{c['quantized_units']}"
                         f" {c['sparsity_values']}, rescaled {c['rescaled_units'] or 'none'}")
            lines.append(f"      attn {c['attention_bits']}")
            lines.append(f"      mlp  {c['mlp_bits']}")
            if "bits_per_role" in c:
                lines.append("      " + "; ".join(f"{role} " + " ".join(f"{b}b×{k}" for b, k in counts.items())
                                                  for role, counts in c["bits_per_role"].items()))
    if evop is not None:
        lines.append("")
        lines.append(f"layer removal at equal layers removed ({evop['layers_removed']}), everything else bf16; "
                     "calibration KL on seed 0's CCDS set")
        header = f"{'method':<44} {'dropped':>14} {'MB':>10} {'WikiText-2 PPL':>15} {'calib KL':>10}"
        lines += [header, "-" * len(header)]
        for key, name in (("shortgpt", "ShortGPT (lowest block influence)"),
                          ("evop", f"EvoP search (evo DEAP, {evop['evop']['evaluations']} evaluations)")):
            e = evop[key]
            lines.append(f"{name:<44} {str(e['dropped']):>14} {e['bytes'] / MB:>10.3f} {e['ppl']:>15.4g} "
                         f"{e['kl']:>10.4f}")
        lines.append(f"  EvoP / ShortGPT PPL {evop['evop']['ppl'] / evop['shortgpt']['ppl']:.3f}, "
                     f"KL {evop['evop']['kl'] / evop['shortgpt']['kl']:.3f}")
        order = np.argsort(evop["influence"])
        lines.append("  block influence, lowest first: " + ", ".join(
            f"{i}:{evop['influence'][i]:.3f}" for i in order[:8]))
    return "\n".join(lines)


def read_llamacpp(path: str) -> list[dict]:
    """The llama.cpp files of a gguf_vs_llamacpp.py ("targets") or llamacpp_peer.py ("rows") results
    JSON that were quantized and scored: method, bytes, WikiText-2 and C4 PPL (C4 None if absent)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--llamacpp-sizes {path}: cannot read it as JSON ({exc})") from None
    rows = (data.get("targets") or data.get("rows")) if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise SystemExit(f"--llamacpp-sizes {path}: no 'targets' or 'rows' list (gguf_vs_llamacpp.py or "
                         "llamacpp_peer.py results.json)")
    files = []
    for row in rows:
        scores = row.get("eval") or {}
        if row.get("status") != "ok" or "wikitext2" not in scores or not str(row.get("method", "")).startswith("llama.cpp"):
            continue
        files.append({"method": row["method"], "bytes": int(row["bytes"]), "wikitext2": scores["wikitext2"]["ppl"],
                      "c4": scores["c4"]["ppl"] if "c4" in scores else None,
                      "tokens": scores["wikitext2"].get("tokens_predicted")})
    if not files:
        raise SystemExit(f"--llamacpp-sizes {path}: no llama.cpp file with status ok and a WikiText-2 PPL")
    return sorted(files, key=lambda f: (f["bytes"], f["method"]))


def size_budgets(args) -> list[int]:
    """The budgets of the llama.cpp-size searches: --budgets-bytes, else every distinct size in
    --llamacpp-sizes (at most --llamacpp-max-bytes), ascending."""
    if args.budgets_bytes:
        try:
            budgets = sorted({int(b) for b in args.budgets_bytes.split(",") if b.strip()})
        except ValueError:
            raise SystemExit(f"--budgets-bytes {args.budgets_bytes!r}: give whole bytes, comma-separated") from None
        if not budgets or budgets[0] <= 0:
            raise SystemExit("--budgets-bytes: give positive byte counts")
        return budgets
    if not args.llamacpp_sizes:
        return []
    return sorted({f["bytes"] for f in read_llamacpp(args.llamacpp_sizes)
                   if args.llamacpp_max_bytes is None or f["bytes"] <= args.llamacpp_max_bytes})


def best_at_or_above(files: list[dict], budget: int, text: str) -> dict | None:
    """The llama.cpp file of `budget` bytes or more with the lowest PPL on `text`."""
    fits = [f for f in files if f["bytes"] >= budget and f[text] is not None]
    return min(fits, key=lambda f: f[text]) if fits else None


def read_extra_results(args, size_names: list[str]) -> dict[str, dict]:
    """--extra-results DIR: the results (b{BYTES}-s{SEED}.json, in DIR or DIR/results) of size jobs an
    earlier call finished with the same model, space, generations and population (those a result records); those jobs are not run again
    and their results join the table (e.g. seed 0 of a size, with seeds 1 and 2 run now)."""
    if not args.extra_results:
        return {}
    folders = [Path(f) for f in args.extra_results]
    for folder in folders:
        if not folder.is_dir():
            raise SystemExit(f"--extra-results {folder}: no such folder (give the folder of earlier b*-s*.json results)")
    space = space_spec(args)
    extra = {}
    for name in size_names:
        path = next((p for folder in folders for p in (folder / f"{name}.json", folder / "results" / f"{name}.json")
                     if p.is_file()), None)
        if path is None:
            continue
        try:
            result = json.loads(path.read_text())
            budget, seed = parse_size_job(name)
            if (result["budget_bytes"], result["seed"]) != (budget, seed) or "deap" not in result:
                raise ValueError(f"budget {result['budget_bytes']} seed {result['seed']}, not {budget} and {seed}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"--extra-results {path}: not a size job's result ({exc})") from None
        asked = {"space": space, "model": args.model, "generations": args.generations, "population": args.population}
        differ = [f"{key} {result[key]!r} there, {value!r} here" for key, value in asked.items()
                  if key in result and result[key] != value]
        if differ:
            raise SystemExit(f"--extra-results {path}: another setting ({', '.join(differ)}); "
                             "pass the same --model, --space, --generations and --population, or leave that file out")
        extra[name] = {**result, "from": str(path)}
    print(f"--extra-results {', '.join(map(str, folders))}: {len(extra)} finished size job(s) reused: "
          f"{', '.join(extra) or 'none'}", flush=True)
    return extra


def render_sizes(args, sizes: dict[str, dict], files: list[dict], failed: dict[str, str] | None = None) -> str:
    """evo's artifact at each budget against the llama.cpp files of exactly that size and against the
    best llama.cpp file of that size or larger (issue 18's bar), on WikiText-2 and C4. `failed`: size
    jobs that failed (name -> why), shown in their budget's row."""
    failed = failed or {}
    by_budget: dict[int, list[dict]] = {}
    for name, result in sizes.items():
        by_budget.setdefault(parse_size_job(name)[0], []).append(result)
    failed_by_budget: dict[int, list[str]] = {}
    for name, why in failed.items():
        failed_by_budget.setdefault(parse_size_job(name)[0], []).append(f"{name}: {why}")
    c4 = all("ppl_c4" in r["deap"] for results in by_budget.values() for r in results)
    texts = [("wikitext2", "ppl", "WT2")] + ([("c4", "ppl_c4", "C4")] if c4 else [])
    lines = ["evo's native artifact at each llama.cpp file's size (artifact bytes <= the budget) against the llama.cpp "
             "file(s) of that size (best PPL among them) and the best llama.cpp file of that size or larger (lowest "
             "PPL among files >= the budget, issue 18's bar); evo's own perplexity for all "
             f"({args.max_tokens:,} tokens of WikiText-2 test" + (" and C4 validation" if c4 else "")
             + f", {SEQ_LEN}-token windows); space {next(iter(sizes.values()))['space'] if sizes else args.space}; "
             "evo mean ± std over seeds; 'below' counts the seeds with a lower PPL"]
    header = f"{'budget bytes':>12} {'evo MB':>8}"
    for _, _, label in texts:
        header += f" {'evo ' + label:>14} {'same size':>9} {'>= size':>8}"
    header += f" {'below same size':>16} {'below >= size':>14} {'evals':>6}"
    lines += [header, "-" * len(header)]
    notes = []
    for budget in sorted(set(by_budget) | set(failed_by_budget)):
        results = by_budget.get(budget, [])
        if not results:
            lines.append(f"{budget:>12,} failed: " + "; ".join(failed_by_budget[budget]))
            continue
        n = len(results)
        row = f"{budget:>12,} {max(r['deap']['bytes'] for r in results) / MB:>8.3f}"
        below_same, below_best = [], []
        for text, key, label in texts:
            evo = np.array([r["deap"][key] for r in results])
            same = [f for f in files if f["bytes"] == budget and f[text] is not None]
            same_best = min(same, key=lambda f: f[text]) if same else None
            best = best_at_or_above(files, budget, text)
            row += (f" {mean_std(evo):>14} " + (f"{same_best[text]:>9.3f}" if same_best else f"{'-':>9}")
                    + " " + (f"{best[text]:>8.3f}" if best else f"{'-':>8}"))
            below_same.append(f"{int((evo < same_best[text]).sum())}/{n}" if same_best else "-")
            below_best.append(f"{int((evo < best[text]).sum())}/{n}" if best else "-")
            if same_best:
                notes.append(f"  {budget:,} same size, {label}: {same_best['method']}")
            if best:
                notes.append(f"  {budget:,} >= size, {label}: {best['method']} ({best['bytes']:,} bytes)")
        evals = int(np.mean([r["deap"]["evaluations"] for r in results]))
        row += f" {', '.join(below_same):>16} {', '.join(below_best):>14} {evals:>6}"
        lines.append(row)
        over = [r["deap"]["bytes"] for r in results if r["deap"]["bytes"] > budget]
        if over:
            lines.append(f"{'':>12} evo artifact over the budget: {over}")
        largest = [r for r in results if r["deap"].get("largest")]
        if largest:
            lines.append(f"{'':>12} largest artifact (everything fits): the space's largest config, "
                         + " / ".join(f"{r['largest_bytes']:,}" for r in largest)
                         + f" bytes <= the budget, 0 evaluations ({len(largest)} of {n} seed(s))")
        if budget in failed_by_budget:
            lines.append(f"{'':>12} failed: " + "; ".join(failed_by_budget[budget]))
    lines.append("the llama.cpp files compared:")
    lines += notes
    lines.append("what the search spent its bytes on (attention / MLP bits per layer 0..29):")
    for name, result in sorted(sizes.items(), key=lambda kv: parse_size_job(kv[0])):
        c = result["deap"]["choice"]
        lines.append(f"  {name}: {result['deap']['bytes']:,} bytes, emb {c['embedding_bits']}b "
                     f"{c.get('embedding_quantizer', 'rtn')}, mean linear {c['mean_linear_bits']:.2f}b, "
                     f"attn {c['attention_bits']}, mlp {c['mlp_bits']}, drops {c['drops'] or 'none'}, "
                     f"{result['deap']['evaluations']} evaluations, "
                     + ("largest artifact (everything fits)" if result["deap"].get("largest") else
                        "finished" if result["deap"]["finished"] else "stopped by the deadline")
                     + (f", from {result['from']}" if "from" in result else ""))
    return "\n".join(lines)


def job(args, name: str) -> dict:
    if name == "baselines":
        return job_baselines(args)
    if name == "evop":
        return job_evop(args, read_baselines(args))
    if name.startswith("b"):
        return job_size(args, name)
    return job_seed(args, int(name[len("seed"):]))


def script_argv(args) -> list[str]:
    return common_argv(__file__, args) + ["--space", args.space, "--reserve-s", str(args.reserve_s)] + (
        ["--budget-bytes", str(args.budget_bytes)] if args.budget_bytes else []) + (
        ["--quantizer", args.quantizer] if args.quantizer else []) + (
        ["--deadline-at", repr(args.deadline_at)] if args.deadline_at else []) + (
        ["--skip-random"] if args.skip_random else []) + (["--c4"] if args.c4 else [])


def space_spec(args) -> str:
    """The searched space: --space as given, or with --quantizer a copy of it whose [quantization]
    names that quantizer (written under --out/spaces, so every job and a resume read the same file)."""
    if not args.quantizer:
        return args.space
    source = SearchSpace.load(args.space)
    path = Path(args.out) / "spaces" / f"{source.name}-{args.quantizer}.toml"
    if not path.exists():
        from evo.search.space import SPACES_DIR

        original = Path(args.space) if Path(args.space).is_file() else SPACES_DIR / f"{args.space}.toml"
        lines, table = [], None
        for line in original.read_text().splitlines():
            header = line.split("#")[0].strip()
            if header.startswith("["):
                table = header
            if not (table == "[quantization]" and line.strip().startswith("quantizer")):
                lines.append(line)
        tables = [i for i, line in enumerate(lines) if line.split("#")[0].strip() == "[quantization]"]
        if not tables:
            lines += ["", "[quantization]"]
            tables = [len(lines) - 1]
        at = tables[0] + 1
        lines.insert(at, f'quantizer = "{args.quantizer}"')
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        if SearchSpace.load(str(path)).base.quantizer != args.quantizer:
            raise SystemExit(f"{path}: could not set the quantizer")
    return str(path.resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64 * SEQ_LEN, help="WikiText-2 tokens for perplexity")
    parser.add_argument("--out", default="runs/search_quality", help="run directories and results go here")
    parser.add_argument("--skip-evop", action="store_true")
    parser.add_argument("--space", default="default", help="the searched space (a name or a .toml file)")
    parser.add_argument("--quantizer", choices=("rtn", "mse", "gptq"), default=None,
                        help="search the space with this quantizer (default: the space's own)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds and evop in this many parallel processes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    parser.add_argument("--skip-random", action="store_true",
                        help="no random-search comparison (halves the time of a seed)")
    parser.add_argument("--c4", action="store_true", help="also C4 validation perplexity of every artifact")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="wall seconds for the whole call: searches stop --reserve-s before it and export the "
                             "best found so far; jobs still running at the deadline are stopped and the table "
                             "shows what finished (the same command resumes the rest)")
    parser.add_argument("--reserve-s", type=float, default=100.0,
                        help="seconds a seed keeps back from its search for the export and perplexities")
    parser.add_argument("--budget-bytes", type=int, default=None,
                        help="the seeds' budget (default: the uniform 3-bit artifact's bytes; issue 18's figure, "
                             "66397058, is that artifact before metadata files were packed)")
    parser.add_argument("--llamacpp-sizes", default=None, metavar="FILE.json",
                        help="search at the file size of each llama.cpp GGUF in this results JSON (gguf_vs_llamacpp.py's "
                             "or llamacpp_peer.py's) and compare with the best llama.cpp file of that size or larger "
                             "(WikiText-2 and C4 PPL from the JSON; implies --c4)")
    parser.add_argument("--budgets-bytes", default=None, metavar="B1,B2,...",
                        help="the llama.cpp-size searches' budgets (default: every distinct size in --llamacpp-sizes)")
    parser.add_argument("--llamacpp-max-bytes", type=int, default=None,
                        help="only the llama.cpp sizes up to this many bytes (with --llamacpp-sizes)")
    parser.add_argument("--size-seeds", type=seed_list, default=(0,), metavar="N|S1,S2",
                        help="seeds per llama.cpp size: N for 0..N-1, or a comma list (1,2: the seeds an earlier "
                             "call's --extra-results lack)")
    parser.add_argument("--extra-results", action="append", default=None, metavar="DIR",
                        help="size jobs an earlier call finished (DIR/b{BYTES}-s{SEED}.json or DIR/results/...; the "
                             "same model, space, generations and population): not run again, merged into the table "
                             "(repeat it for several folders; the first holding a job wins)")
    parser.add_argument("--deadline-at", type=float, default=None, help=argparse.SUPPRESS)  # for --jobs workers
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # one job, for --jobs workers
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.llamacpp_sizes:
        args.c4 = True
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.only:
        try:
            run_job(args, args.only, lambda: job(args, args.only))
        except Unfinished as exc:
            print(exc, flush=True)
            raise SystemExit(UNFINISHED_EXIT) from None
        return
    if args.deadline_s is not None and args.deadline_at is None:
        args.deadline_at = time.time() + args.deadline_s
    tic = time.perf_counter()
    budgets = size_budgets(args)
    size_names = [size_job_name(b, s) for b in budgets for s in args.size_seeds]
    # the 3-bit seeds first (issue 18's main goal), then the llama.cpp sizes, then evop
    names = [f"seed{s}" for s in range(args.seeds)] + size_names + ([] if args.skip_evop else ["evop"])

    extra = read_extra_results(args, size_names)  # finished size jobs of earlier calls (--extra-results)

    def finished(name: str) -> bool:
        return name in extra or (Path(args.out) / "results" / f"{name}.json").exists()

    needs_baselines = args.seeds > 0 or not args.skip_evop  # the llama.cpp-size table needs none
    # with --budget-bytes (and no evop, whose budget is the dense artifact's) no search waits for the
    # baselines' artifacts and perplexities: they run as one more job beside the searches
    beside = needs_baselines and args.budget_bytes is not None and args.skip_evop and args.jobs > 1
    if needs_baselines and not beside:
        run_job(args, "baselines", lambda: job_baselines(args))
    failed: dict[str, str] = {}  # job -> why it failed: shown in the table, the others' results still rendered
    if args.jobs > 1:
        failed = run_parallel(args, [n for n in (["baselines"] if beside else []) + names if not finished(n)],
                              script_argv(args), deadline_at=args.deadline_at)
    baselines = None
    if needs_baselines:
        if finished("baselines") or not beside:
            baselines = run_job(args, "baselines", lambda: job_baselines(args))
        elif "baselines" in failed:
            print(f"baselines: failed ({failed['baselines']})", flush=True)
        else:
            print("baselines: not finished by the deadline (the same command resumes them)", flush=True)
    results = {}
    for name in names:
        if name in extra:
            results[name] = extra[name]
            continue
        if name in failed:
            continue
        done = Path(args.out) / "results" / f"{name}.json"
        if args.deadline_at and not done.exists() and (args.jobs > 1 or time.time() > args.deadline_at - args.reserve_s):
            print(f"{name}: not finished by the deadline", flush=True)
            continue
        try:
            results[name] = run_job(args, name, lambda name=name: job(args, name))
        except Unfinished as exc:
            print(exc, flush=True)
        except Exception as exc:  # one job's failure is shown in the table; the others are still rendered
            traceback.print_exc()
            failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    seeds = [results[f"seed{s}"] for s in range(args.seeds) if f"seed{s}" in results]
    sizes = {name: results[name] for name in size_names if name in results}
    failed_sizes = {name: why for name, why in failed.items() if name in size_names}
    if not seeds and not sizes and not failed:
        raise SystemExit("no search finished before the deadline: raise --deadline-s or lower --generations")
    tables = [render(args, baselines, seeds, results.get("evop"))] if seeds and baselines else []
    if sizes or failed_sizes:
        files = read_llamacpp(args.llamacpp_sizes) if args.llamacpp_sizes else []
        tables.append(render_sizes(args, sizes, files, failed_sizes))
    others = {name: why for name, why in failed.items() if name not in failed_sizes}
    if others:
        tables.append("failed jobs (the logs under --out/logs say more):\n"
                      + "\n".join(f"  {name}: {why}" for name, why in others.items()))
    table = "\n\n".join(tables)
    print(table)
    done = seeds or list(sizes.values())
    device = done[0].get("device", "?") if done else "-"
    print(f"\ntotal wall time {time.perf_counter() - tic:.0f} s on {device}; "
          f"job wall times: " + ", ".join(f"{k} {v.get('wall_seconds', 0):.0f} s" for k, v in
                                          {**({"baselines": baselines} if baselines else {}), **results}.items()
                                          if k not in extra))
    (Path(args.out) / "table.txt").write_text(table + "\n")
    write_json(Path(args.out) / "results.json", {"baselines": baselines, **results,
                                                 **({"failed": failed} if failed else {})})
    if failed:
        raise SystemExit(f"jobs failed: {', '.join(failed)} (the table shows the others)")

if __name__ == "__main__":
    main()
