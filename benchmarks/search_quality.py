"""Search quality on the default model: evo's DEAP search against uniform RTN and random search at
the bytes of uniform 3-bit, and EvoP layer removal against ShortGPT at equal layers removed.

    python benchmarks/search_quality.py --device cuda --seeds 3 --generations 8 --population 16 \
        --out runs/search_quality [--jobs 4] [--skip-evop]

What it runs (every search in its own run directory under --out, so a second call resumes):
  baselines  uniform 3-bit and 4-bit RTN (g128, asymmetric; embedding 8-bit g128) written as
             artifacts; the 3-bit artifact's bytes on disk are the search budget.
  seedS      evo's DEAP search (space `default`) at that budget, then random search given exactly
             as many evaluations as the DEAP run's journal holds. DEAP's count includes its cheap
             stage-1 screens (a few sequences × 128 tokens) while every random evaluation is a
             full one, which favours random search. Both share the seed's CCDS calibration set.
  evop       EvoP (space `evop`: 3 whole layers removed, bf16 otherwise, budget just under the
             dense artifact) and ShortGPT's 3 layers of lowest block influence on the same
             calibration tokens.
Every compared model is written as an artifact and reloaded with evo.artifact.load; its WikiText-2
perplexity is measured on --max-tokens tokens in 512-token windows, its calibration KL by the
run's own evaluator at the final stage. Seeds change the calibration draw and the search.
With --jobs N the seeds and evop run in N processes sharing the GPU and one size cache.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from evo import artifact
from evo.baselines import block_influence, shortgpt_config, uniform_config
from evo.config import CompressionConfig
from evo.data import read_text
from evo.evaluate import perplexity, tokenize_for_eval
from evo.export import compress_and_write
from evo.fitness import FINAL_STAGE
from evo.modelio import load_model
from evo.search import REFERENCE_FILE, STATS_FILE, SearchSpec, open_session, run_search
from evo.size import SizeCache
from evo.sizemodel import SizeModel
from evo.space import SearchSpace
from evo.store import CALIBRATION_FILE, MANIFEST_FILE, SIZE_CACHE_DIR
from evo.types import ATTENTION_ROLES

MB = 1_000_000
SEQ_LEN = 512  # WikiText-2 windows, the usual protocol
UNIFORM_LOW, UNIFORM_HIGH = 3, 4  # the budget's width and the one shown for scale
RESULT_FILE = "result.json"


def _say(tag: str):
    def say(message: str) -> None:
        print(f"[{tag} {time.strftime('%H:%M:%S')}] {message}", flush=True)

    return say


def _free_gpu() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _bytes_on_disk(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _wikitext_ids(tokenizer) -> np.ndarray:
    return tokenize_for_eval(tokenizer, read_text("wikitext2"))


def _artifact_ppl(directory: Path, ids: np.ndarray, args) -> float:
    model, _ = artifact.load(directory, device=args.device)
    ppl = perplexity(model, ids, seq_len=SEQ_LEN, max_tokens=args.max_tokens).ppl
    del model
    _free_gpu()
    return ppl


def _write_and_measure(loaded, config: CompressionConfig, directory: Path, ids: np.ndarray, args, *, stats=None,
                       size_cache=None) -> dict:
    """Write `config`'s artifact from a copy of the (uncompressed) model, reload it, measure its PPL."""
    twin = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
    summary = compress_and_write(twin, config, directory, stats=stats, size_cache=size_cache, overwrite=True)
    del twin
    _free_gpu()
    on_disk = _bytes_on_disk(directory)
    if on_disk != summary.total_bytes:
        raise RuntimeError(f"{directory}: {on_disk} bytes on disk but the artifact summary says {summary.total_bytes}")
    return {"bytes": summary.total_bytes, "ppl": _artifact_ppl(directory, ids, args)}


def describe_choice(config: CompressionConfig, info) -> dict:
    """What a config spends its bytes on: embedding bits, per-layer bits of attention and MLP (a
    digit per layer, '-' where the block is dropped), sparsity and rescale of the quantized units,
    drops, and the parameter-weighted mean bit-width of the decoder linears that are kept."""
    attention, mlp, sparsity, rescale = [], [], [], []
    weighted = numel = 0
    for layer in info.layers:
        entry, drop = config.layer(layer.index), config.drop_for(layer.index)
        for block, gone, out in (("attention", drop in ("attention", "layer"), attention),
                                 ("mlp", drop in ("mlp", "layer"), mlp)):
            setting = getattr(entry, block) or config.default
            out.append("-" if gone else ("F" if setting.bits == 16 else str(setting.bits)))
            if gone:
                continue
            if setting.quantized:
                sparsity.append(setting.sparsity)
                rescale.append(setting.rescale)
            for lin in layer.linears:
                if (lin.role in ATTENTION_ROLES) == (block == "attention"):
                    weighted += setting.bits * lin.numel
                    numel += lin.numel
    return {
        "embedding_bits": config.embedding.bits,
        "attention_bits": "".join(attention),
        "mlp_bits": "".join(mlp),
        "drops": {str(k): v for k, v in config.drops.items()},
        "mean_linear_bits": weighted / numel if numel else 0.0,
        "sparse_units": sum(1 for s in sparsity if s > 0),
        "sparsity_values": sorted({s for s in sparsity if s > 0}),
        "rescaled_units": {repr(r): sum(1 for x in rescale if x == r) for r in sorted(set(rescale)) if r != 1.0},
        "quantized_units": len(sparsity),
    }


def _progress(say, every: int):
    state = {"next": 0}

    def on_progress(p) -> None:
        if p.evaluations_done >= state["next"] or p.evaluations_done == p.evaluations_total:
            state["next"] = p.evaluations_done + every
            best = f"best {p.best_quality:.4f} at {p.best_bytes / MB:.3f} MB" if p.best_quality is not None else "none yet"
            say(f"gen {p.generation}/{p.generations} eval {p.evaluations_done}/{p.evaluations_total} {best}, "
                f"{p.evals_per_second:.2f} new eval/s")

    return on_progress


def _prepare_run_dir(run_dir: Path, shared_cache: Path, share_from: Path | None = None) -> bool:
    """Make a run directory whose size cache is the benchmark's shared one; a new run may start from
    another run's calibration set, statistics and dense reference. Returns whether it resumes."""
    resume = (run_dir / MANIFEST_FILE).exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    link = run_dir / SIZE_CACHE_DIR
    if not link.exists() and not link.is_symlink():
        link.symlink_to(shared_cache.resolve(), target_is_directory=True)
    if share_from is not None and not resume:
        for name in (CALIBRATION_FILE, STATS_FILE, REFERENCE_FILE):
            if (share_from / name).exists() and not (run_dir / name).exists():
                shutil.copy2(share_from / name, run_dir / name)
    return resume


def _search(spec: SearchSpec, run_dir: Path, args, say, share_from: Path | None = None):
    resume = _prepare_run_dir(run_dir, Path(args.out) / SIZE_CACHE_DIR, share_from)
    tic = time.perf_counter()
    session = open_session(spec, run_dir, resume=resume, device=args.device, status=say)
    result = run_search(session, on_progress=_progress(say, every=max(1, spec.population * 2)))
    seconds = time.perf_counter() - tic
    say(f"{spec.engine} search: {result.evaluations} evaluations ({result.new_evaluations} new) in {seconds:.0f} s; "
        f"best {result.best['quality']:.4f} at {result.best['size_bytes']:,} bytes")
    session.evaluator.restore()
    return session, result, seconds


def _journal(run_dir: Path) -> list[dict]:
    path = run_dir / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- jobs ------------------------------------------------------------------------------------------------


def job_baselines(args) -> dict:
    say = _say("baselines")
    out = Path(args.out)
    loaded = load_model(args.model, device=args.device)
    ids = _wikitext_ids(loaded.tokenizer)
    cache = SizeCache(out / SIZE_CACHE_DIR)
    result = {"model": loaded.info.model_id, "wikitext_tokens": int(min(ids.size, args.max_tokens))}
    dense_ppl = perplexity(loaded.model, ids, seq_len=SEQ_LEN, max_tokens=args.max_tokens).ppl
    dense_bytes = SizeModel.for_model(loaded, cache).artifact_bytes(uniform_config(16, embedding_bits=16))
    result["dense"] = {"bytes": dense_bytes, "ppl": dense_ppl}
    say(f"dense: {dense_bytes:,} bytes as a bf16 artifact, WikiText-2 PPL {dense_ppl:.3f}")
    for bits in (UNIFORM_LOW, UNIFORM_HIGH):
        measured = _write_and_measure(loaded, uniform_config(bits), out / "artifacts" / f"uniform{bits}", ids, args,
                                      size_cache=cache)
        result[f"uniform{bits}"] = measured
        say(f"uniform {bits}-bit: {measured['bytes']:,} bytes, WikiText-2 PPL {measured['ppl']:.3f}")
    return result


def job_seed(args, seed: int, baselines: dict) -> dict:
    say = _say(f"seed{seed}")
    out = Path(args.out) / f"seed{seed}"
    budget = baselines[f"uniform{UNIFORM_LOW}"]["bytes"]
    spec = SearchSpec(budget_bytes=budget, model=args.model, space="default", engine="deap",
                      generations=args.generations, population=args.population, seed=seed)
    result: dict = {"seed": seed, "budget_bytes": budget}

    session, deap, seconds = _search(spec, out / "deap", args, _say(f"seed{seed} deap"))
    ids = _wikitext_ids(session.loaded.tokenizer)
    for bits in (UNIFORM_LOW, UNIFORM_HIGH):
        result[f"uniform{bits}_kl"] = session.evaluator.evaluate(uniform_config(bits), FINAL_STAGE)
    session.evaluator.restore()
    best = CompressionConfig.from_dict(deap.best["config"])
    measured = _write_and_measure(session.loaded, best, out / "deap" / "export", ids, args,
                                  stats=session.activation_stats, size_cache=session.size_model.size_cache)
    journal = _journal(out / "deap")
    evaluations = len(journal)
    result["deap"] = {**measured, "kl": deap.best["quality"], "recorded_bytes": deap.best["size_bytes"],
                      "evaluations": evaluations, "seconds": seconds,
                      "stage1": sum(1 for e in journal if e["stage"] == 1),
                      "stage2": sum(1 for e in journal if e["stage"] == 2),
                      "choice": describe_choice(best, session.loaded.info)}
    say(f"deap best: KL {deap.best['quality']:.4f}, {measured['bytes']:,} bytes, PPL {measured['ppl']:.3f}")
    del session
    _free_gpu()

    # exactly the DEAP run's number of evaluations, all of them full ones, in one batch
    random_spec = dataclasses.replace(spec, engine="random", population=evaluations, generations=0)
    session, rand, seconds = _search(random_spec, out / "random", args, _say(f"seed{seed} random"),
                                     share_from=out / "deap")
    best = CompressionConfig.from_dict(rand.best["config"])
    measured = _write_and_measure(session.loaded, best, out / "random" / "export", ids, args,
                                  stats=session.activation_stats, size_cache=session.size_model.size_cache)
    result["random"] = {**measured, "kl": rand.best["quality"], "recorded_bytes": rand.best["size_bytes"],
                        "evaluations": len(_journal(out / "random")), "seconds": seconds,
                        "choice": describe_choice(best, session.loaded.info)}
    say(f"random best: KL {rand.best['quality']:.4f}, {measured['bytes']:,} bytes, PPL {measured['ppl']:.3f}")
    del session
    _free_gpu()
    return result


def job_evop(args, baselines: dict) -> dict:
    say = _say("evop")
    out = Path(args.out) / "evop"
    space = SearchSpace.load("evop")
    # every choice of fixed_drops layers fits: the comparison is at equal layers removed
    budget = baselines["dense"]["bytes"] - 1
    spec = SearchSpec(budget_bytes=budget, model=args.model, space="evop", engine="deap",
                      generations=args.generations, population=args.population, seed=0)
    session, evop, seconds = _search(spec, out / "search", args, say)
    info = session.loaded.info
    ids = _wikitext_ids(session.loaded.tokenizer)
    tokens = session.calibration.calibration.token_ids
    influence = block_influence(session.loaded.model, info, tokens)
    shortgpt = shortgpt_config(influence, space.fixed_drops)
    shortgpt_kl = session.evaluator.evaluate(shortgpt, FINAL_STAGE)
    session.evaluator.restore()
    best = CompressionConfig.from_dict(evop.best["config"])
    result = {"layers_removed": space.fixed_drops, "budget_bytes": budget,
              "influence": [float(x) for x in influence]}
    result["evop"] = {**_write_and_measure(session.loaded, best, out / "export_evop", ids, args,
                                           size_cache=session.size_model.size_cache),
                      "kl": evop.best["quality"], "dropped": sorted(int(i) for i in best.drops),
                      "evaluations": len(_journal(out / "search")), "seconds": seconds}
    result["shortgpt"] = {**_write_and_measure(session.loaded, shortgpt, out / "export_shortgpt", ids, args,
                                               size_cache=session.size_model.size_cache),
                          "kl": shortgpt_kl, "dropped": sorted(int(i) for i in shortgpt.drops)}
    say(f"evop drops {result['evop']['dropped']} PPL {result['evop']['ppl']:.3f}; "
        f"shortgpt drops {result['shortgpt']['dropped']} PPL {result['shortgpt']['ppl']:.3f}")
    return result


def run_job(args, name: str) -> dict:
    """Run one job unless its result is already on disk; return the result."""
    path = Path(args.out) / "results" / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    tic = time.perf_counter()
    if name == "baselines":
        result = job_baselines(args)
    else:
        baselines = json.loads((Path(args.out) / "results" / "baselines.json").read_text())
        result = job_evop(args, baselines) if name == "evop" else job_seed(args, int(name[len("seed"):]), baselines)
    result["wall_seconds"] = time.perf_counter() - tic
    result["device"] = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, result)
    return result


def _run_parallel(args, names: list[str]) -> None:
    """Each job in its own process (`--only NAME`), at most --jobs at a time; logs under out/logs."""
    logs = Path(args.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pending, running = list(names), {}
    base = [sys.executable, __file__, "--device", args.device, "--model", args.model, "--out", args.out,
            "--generations", str(args.generations), "--population", str(args.population),
            "--max-tokens", str(args.max_tokens), "--seeds", str(args.seeds), "--threads",
            str(max(1, (os.cpu_count() or 2) // args.jobs))]
    failed = []
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            log = open(logs / f"{name}.log", "a")
            running[name] = (subprocess.Popen(base + ["--only", name], stdout=log, stderr=subprocess.STDOUT), log,
                             time.perf_counter())
            print(f"started {name} (log {logs / (name + '.log')})", flush=True)
        time.sleep(2)
        for name, (proc, log, tic) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            print(f"{name} finished with exit code {proc.returncode} in {time.perf_counter() - tic:.0f} s", flush=True)
            if proc.returncode != 0:
                failed.append(name)
                print("".join((logs / f"{name}.log").read_text().splitlines(keepends=True)[-30:]), flush=True)
    if failed:
        raise SystemExit(f"jobs failed: {', '.join(failed)}")


# --- the tables -------------------------------------------------------------------------------------------


def _mean_std(values) -> str:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 1:
        return f"{values[0]:.4g}"
    return f"{values.mean():.4g} ± {values.std(ddof=1):.2g}"


def render(args, baselines: dict, seeds: list[dict], evop: dict | None) -> str:
    lines = []
    u_lo, u_hi = baselines[f"uniform{UNIFORM_LOW}"], baselines[f"uniform{UNIFORM_HIGH}"]
    n = len(seeds)
    budget = u_lo["bytes"]
    lines.append(f"SmolLM2-135M ({baselines['model']}), budget = uniform {UNIFORM_LOW}-bit artifact = {budget:,} bytes; "
                 f"WikiText-2 test PPL over {baselines['wikitext_tokens']:,} tokens ({SEQ_LEN}-token windows); "
                 f"calibration KL (nats/token, each seed's CCDS set, final stage); {n} seed(s), mean ± std")
    header = f"{'method':<34} {'MB':>16} {'WikiText-2 PPL':>18} {'calib KL':>18} {'evaluations':>22}"
    lines += [header, "-" * len(header)]

    def row(name, mb, ppl, kl, evals):
        lines.append(f"{name:<34} {mb:>16} {ppl:>18} {kl:>18} {evals:>22}")

    row("dense (bf16)", f"{baselines['dense']['bytes'] / MB:.3f}", f"{baselines['dense']['ppl']:.4g}", "0", "-")
    row(f"uniform {UNIFORM_HIGH}-bit RTN g128 (own size)", f"{u_hi['bytes'] / MB:.3f}", f"{u_hi['ppl']:.4g}",
        _mean_std([s[f"uniform{UNIFORM_HIGH}_kl"] for s in seeds]), "-")
    row(f"uniform {UNIFORM_LOW}-bit RTN g128 (budget)", f"{u_lo['bytes'] / MB:.3f}", f"{u_lo['ppl']:.4g}",
        _mean_std([s[f"uniform{UNIFORM_LOW}_kl"] for s in seeds]), "-")
    for key, name in (("random", "random search"), ("deap", "evo DEAP (NSGA-II, two-stage)")):
        evals = [s[key]["evaluations"] for s in seeds]
        detail = f"{int(np.mean(evals))}"
        if key == "deap":
            detail += f" ({int(np.mean([s['deap']['stage2'] for s in seeds]))} full)"
        else:
            detail += " (all full)"
        row(name, _mean_std([s[key]["bytes"] / MB for s in seeds]), _mean_std([s[key]["ppl"] for s in seeds]),
            _mean_std([s[key]["kl"] for s in seeds]), detail)
    lines.append("")
    evo_ppl = np.array([s["deap"]["ppl"] for s in seeds])
    evo_kl = np.array([s["deap"]["kl"] for s in seeds])
    rnd_ppl = np.array([s["random"]["ppl"] for s in seeds])
    rnd_kl = np.array([s["random"]["kl"] for s in seeds])
    lo_kl = np.array([s[f"uniform{UNIFORM_LOW}_kl"] for s in seeds])
    hi_kl = np.array([s[f"uniform{UNIFORM_HIGH}_kl"] for s in seeds])
    lines.append("ratios (per seed, then mean ± std)           PPL                KL")
    lines.append(f"  evo / uniform {UNIFORM_LOW}-bit                  {_mean_std(evo_ppl / u_lo['ppl']):>18} "
                 f"{_mean_std(evo_kl / lo_kl):>18}")
    lines.append(f"  evo / random search                  {_mean_std(evo_ppl / rnd_ppl):>18} "
                 f"{_mean_std(evo_kl / rnd_kl):>18}")
    lines.append(f"  evo / uniform {UNIFORM_HIGH}-bit (larger)         {_mean_std(evo_ppl / u_hi['ppl']):>18} "
                 f"{_mean_std(evo_kl / hi_kl):>18}")
    gap = (u_lo["ppl"] - evo_ppl) / (u_lo["ppl"] - u_hi["ppl"])
    gap_kl = (lo_kl - evo_kl) / (lo_kl - hi_kl)
    lines.append(f"  share of the {UNIFORM_LOW}→{UNIFORM_HIGH}-bit gap evo closes      {_mean_std(gap):>18} "
                 f"{_mean_std(gap_kl):>18}")
    lines.append("  (random search gets as many evaluations as DEAP's journal holds; DEAP's include cheap stage-1 "
                 "screens, so random gets more full evaluations)")
    lines.append("")
    lines.append("per seed        evo PPL   evo KL      evo MB   random PPL  random KL  random MB  evals  deap s  random s")
    for s in seeds:
        d, r = s["deap"], s["random"]
        lines.append(f"  seed {s['seed']:<6} {d['ppl']:>9.3f} {d['kl']:>8.4f} {d['bytes'] / MB:>11.6f} {r['ppl']:>11.3f} "
                     f"{r['kl']:>10.4f} {r['bytes'] / MB:>10.6f} {d['evaluations']:>6} {d['seconds']:>7.0f} "
                     f"{r['seconds']:>9.0f}")
    lines.append("")
    lines.append("what the search chose (attention / MLP bits per layer 0..29, '-' = dropped):")
    for s in seeds:
        for key in ("deap", "random"):
            c = s[key]["choice"]
            lines.append(f"  seed {s['seed']} {key:<6} emb {c['embedding_bits']}b, mean linear {c['mean_linear_bits']:.2f}b,"
                         f" drops {c['drops'] or 'none'}, sparse units {c['sparse_units']}/{c['quantized_units']}"
                         f" {c['sparsity_values']}, rescaled {c['rescaled_units'] or 'none'}")
            lines.append(f"      attn {c['attention_bits']}")
            lines.append(f"      mlp  {c['mlp_bits']}")
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
    parser.add_argument("--jobs", type=int, default=1, help="seeds and evop in this many parallel processes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # one job, for --jobs workers
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.only:
        run_job(args, args.only)
        return
    tic = time.perf_counter()
    baselines = run_job(args, "baselines")
    names = [f"seed{s}" for s in range(args.seeds)] + ([] if args.skip_evop else ["evop"])
    if args.jobs > 1:
        _run_parallel(args, [n for n in names if not (Path(args.out) / "results" / f"{n}.json").exists()])
    results = {name: run_job(args, name) for name in names}
    seeds = [results[f"seed{s}"] for s in range(args.seeds)]
    table = render(args, baselines, seeds, results.get("evop"))
    print(table)
    print(f"\ntotal wall time {time.perf_counter() - tic:.0f} s on {results[names[0]]['device']}; "
          f"job wall times: " + ", ".join(f"{k} {v['wall_seconds']:.0f} s" for k, v in
                                          {"baselines": baselines, **results}.items()))
    (Path(args.out) / "table.txt").write_text(table + "\n")
    _write_json(Path(args.out) / "results.json", {"baselines": baselines, **results})


if __name__ == "__main__":
    main()
