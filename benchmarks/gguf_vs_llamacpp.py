"""evo's searched GGUF files against llama.cpp's own recipes at the same file sizes (issue 13's table).

    python benchmarks/gguf_vs_llamacpp.py --llama-bin $EVO_DEV/llama/cpu/bin --peer-work-dir $EVO_DEV/peer \
        --device cuda --jobs 16 --out $OUT/gguf --deadline-s 510          # one H200 call (< 9 min)
    python benchmarks/gguf_vs_llamacpp.py --smoke                              # CPU smoke, tiny model, no llama.cpp
    python benchmarks/gguf_vs_llamacpp.py ... --space gguf_gptq                # evo's searches with GPTQ-encoded levels

1. Targets: llama.cpp's Q2_K, Q3_K_S, Q3_K_M, Q4_K_M with imatrix, each also with
   `--token-embedding-type q4_0`, made with benchmarks/llamacpp_peer.py's imatrix and llama-quantize
   helpers in its work dir (--peer-work-dir: what the peer benchmark already made is reused, cached).
   Without llama.cpp binaries the targets are evo's own encodings of the same recipes (their sizes are
   llama.cpp's to the byte, bar llama.cpp's imatrix metadata) and the rows say so.
2. For every distinct target size and every seed (--seeds N: seeds 0..N-1): `evo search --space gguf`
   (--space: another GGUF space, e.g. gguf_gptq, whose decoder linears are GPTQ-encoded on the run's Hessians)
   with the budget = the target's bytes, its best GGUF written (evo.search.gguf_export.write_point);
   predicted bytes == os.stat bytes is checked for each file. Searches run in --search-workers
   processes at once on the device.
3. evo's perplexity of every file, llama.cpp's and evo's (llamacpp_peer's evaluator: transformers'
   GGUF loader + evo.evaluate.perplexity, WikiText-2 test and C4 validation, first 64 windows x 512
   tokens, float32), mean ± std over the seeds.
4. llama.cpp loads evo's GGUF: `llama-perplexity` (WikiText-2, --llama-ppl-chunks chunks of 512) on
   evo's best file at llama.cpp's Q3_K_M size and on llama.cpp's Q3_K_M + imatrix, same command; its
   prompt tokens/s for both.

Writes results.json and results.md under --out. --deadline-s: no new search, evaluation or
llama-perplexity starts after it (a rerun with the same --work-dir finishes from the caches).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import llamacpp_peer as peer  # noqa: E402

RECIPES = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_M")
EMB = "q4_0"
LLAMA_PPL_RECIPE = "Q3_K_M"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="source GGUF (evo alias or .gguf path)")
    p.add_argument("--llama-bin", type=Path, default=None, help="llama-quantize/imatrix/perplexity (none: evo-encoded targets)")
    p.add_argument("--peer-work-dir", type=Path, default=REPO / "runs" / "llamacpp_peer",
                   help="llamacpp_peer.py's work dir: imatrix, quantized GGUFs and evaluations are reused from it")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "gguf_vs_llamacpp", help="runs, GGUFs, caches")
    p.add_argument("--out", type=Path, default=None, help="results.json and results.md (default --work-dir)")
    p.add_argument("--device", default="cpu", help="search and evaluation device: cpu, cuda")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="CPU threads in all")
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--space", default="gguf", help="evo's GGUF search space: gguf, gguf_gptq or a .toml file")
    p.add_argument("--seeds", type=int, default=3, help="search seeds per target size (0..N-1)")
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--population", type=int, default=12)
    p.add_argument("--samples", type=int, default=16, help="calibration sequences of each search")
    p.add_argument("--calib-len", type=int, default=256, help="calibration sequence length")
    p.add_argument("--search-workers", type=int, default=None, help="searches at once (default min(8, jobs//2) on cuda, 1 on cpu)")
    p.add_argument("--datasets", default="wikitext2,c4")
    p.add_argument("--max-tokens", type=int, default=64 * 512)
    p.add_argument("--seq-len", type=int, default=512, help="perplexity window")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--eval-workers", type=int, default=None)
    p.add_argument("--dtype", default="float32", help="perplexity dtype")
    p.add_argument("--llama-ppl-chunks", type=int, default=16)
    p.add_argument("--imatrix-chunks", type=int, default=128)
    p.add_argument("--deadline-s", type=float, default=None)
    p.add_argument("--smoke", action="store_true",
                   help="CPU smoke: a tiny Llama from a config, Q3_K_M sizes only, 2 seeds, 1 generation of 4, "
                        "2 windows of 64 tokens")
    args = p.parse_args(argv)
    if args.smoke:
        args.generations, args.population, args.samples, args.calib_len = 1, 4, 4, 32
        args.max_tokens, args.seq_len, args.batch_size = 128, 64, 2
        args.recipes, args.seeds = "Q3_K_M", min(args.seeds, 2)  # 2 sizes x 2 seeds: minutes on 2 cores
        args.work_dir = args.work_dir.with_name(args.work_dir.name + "_smoke")
    args.recipes = [r.strip().upper() for r in args.recipes.split(",") if r.strip()]
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    cuda = args.device.startswith("cuda")
    if args.search_workers is None:
        args.search_workers = min(8, max(1, args.jobs // 2)) if cuda else 1
    if args.eval_workers is None:
        args.eval_workers = min(8, max(1, args.jobs // 2)) if cuda else 1
    args.eval_threads = max(1, args.jobs // args.eval_workers)
    args.eval_via = "inproc"
    args.out = args.out or args.work_dir
    return args


# ----------------------------------------------------------------------------------------------
# the smoke model


def tiny_model_dir(directory: Path) -> Path:
    """A tiny Llama (hidden 256: k-quants fit its rows; 2 layers) with a byte-level BPE tokenizer."""
    if (directory / "config.json").is_file():
        return directory
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for token in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[token] = len(vocab)
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", pad_token="</s>")
    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# ----------------------------------------------------------------------------------------------
# 1. targets


def llamacpp_targets(args, source: Path, deadline) -> list[peer.Row]:
    """llama.cpp's files (imatrix, with and without emb q4_0), made or reused in --peer-work-dir."""
    work = args.peer_work_dir
    work.mkdir(parents=True, exist_ok=True)
    imatrix = peer.compute_imatrix(args.llama_bin, source, work, chunks=args.imatrix_chunks, ctx=512,
                                   threads=args.jobs, ngl=0, slice_chars=4000)
    (work / "gguf").mkdir(exist_ok=True)
    rows = []
    for recipe in args.recipes:
        for emb in (None, EMB):
            variant = peer.Variant(recipe, True, emb)
            rows.append(peer.quantize_one(args.llama_bin, source, variant, imatrix, work / "gguf", args.jobs, deadline))
    return rows


def evo_encoded_targets(args, model: str) -> list[peer.Row]:
    """Without llama.cpp: the same recipes written by evo's encoders (imatrix on the embedded corpus)."""
    from evo.data.corpus import default_stats_tokens
    from evo.gguf.export import compress_to_gguf
    from evo.gguf.imatrix import collect_importance
    from evo.modelio import load_model

    loaded = load_model(model, device=args.device)
    tokens = default_stats_tokens(loaded.tokenizer)
    importance = collect_importance(loaded, tokens)
    out_dir = args.work_dir / "targets"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for recipe in args.recipes:
        for emb in (None, EMB):
            variant = peer.Variant(recipe, True, emb)
            path = out_dir / f"{variant.name}.gguf"
            if not path.is_file():
                compress_to_gguf(loaded, recipe, path, importance=importance, token_embedding_type=emb)
            rows.append(peer.Row(method=f"evo-encoded {recipe} + imatrix" + (f" + emb {emb}" if emb else "")
                                 + " (no llama.cpp)", path=str(path), kind="gguf", qtype=recipe, imatrix=True,
                                 embedding=emb, bytes=path.stat().st_size))
    return rows


# ----------------------------------------------------------------------------------------------
# 2. evo's searches (one process each)


def search_task(task: dict) -> dict:
    """One `evo search --space SPACE` (a GGUF space) at a budget and seed, its best exported as GGUF."""
    import torch

    from evo.constants import FINAL_STAGE
    from evo.search.gguf_export import write_point
    from evo.search.gguf_space import read_seeds
    from evo.search.loop import SearchSpec, is_run, open_session, run_search
    from evo.search.store import evaluation_key

    if task["deadline"] is not None and time.time() > task["deadline"]:
        return {**task, "status": "not run: deadline"}
    peer._quiet_transformers()
    torch.set_num_threads(task["threads"])
    tic = time.perf_counter()
    run_dir = Path(task["run_dir"])
    spec = SearchSpec(budget_bytes=task["budget"], model=task["model"], space=task["space"], seed=task["seed"],
                      generations=task["generations"], population=task["population"], samples=task["samples"],
                      dtype="float32", seq_len=task["calib_len"], clusters=min(8, max(1, task["samples"] // 2)), screen_sequences=min(4, task["samples"]),
                      screen_tokens=min(128, task["calib_len"]))
    session = open_session(spec, run_dir, resume=is_run(run_dir), device=task["device"])
    result = run_search(session)
    searched = time.perf_counter() - tic
    best = result.best
    out = Path(task["out"])
    if not (out.is_file() and out.stat().st_size == best.size_bytes):
        write_point(session, best, out, overwrite=True)
    seeds = []
    for record in read_seeds(run_dir):
        entry = session.store.lookup(evaluation_key(tuple(record["genome"]), FINAL_STAGE))
        seeds.append({**record, "kl": entry.quality if entry else None, "genome": None})
    return {**task, "status": "ok", "path": str(out), "predicted_bytes": best.size_bytes,
            "stat_bytes": out.stat().st_size, "kl": best.quality, "evaluations": result.evaluations,
            "search_s": round(searched, 1), "total_s": round(time.perf_counter() - tic, 1),
            "dropped_layers": session.config_of(best.genome).dropped, "seeds": seeds, "type_bytes": type_bytes(out)}


def type_bytes(path: Path) -> dict[str, int]:
    """Tensor data bytes of a GGUF file per llama.cpp type, largest first (what a file spends its bytes on)."""
    from gguf import GGUFReader

    totals: dict[str, int] = {}
    for tensor in GGUFReader(str(path)).tensors:
        name = tensor.tensor_type.name
        totals[name] = totals.get(name, 0) + int(tensor.n_bytes)
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def _type_line(totals: dict[str, int]) -> str:
    whole = sum(totals.values()) or 1
    return ", ".join(f"{name} {n / 1e6:.1f} MB ({100 * n / whole:.0f} %)" for name, n in totals.items())


def run_searches(args, model: str, budgets: list[int], deadline) -> list[dict]:
    tasks = []
    for budget in budgets:
        for seed in range(args.seeds):
            name = f"b{budget}-s{seed}" if args.space == "gguf" else f"{_space_tag(args.space)}-b{budget}-s{seed}"
            tasks.append({"model": model, "budget": budget, "seed": seed, "device": args.device, "space": args.space,
                          "generations": args.generations, "population": args.population, "samples": args.samples,
                          "calib_len": args.calib_len, "threads": max(1, args.jobs // args.search_workers),
                          "deadline": deadline, "run_dir": str(args.work_dir / "runs" / name),
                          "out": str(args.work_dir / "gguf" / f"evo-{name}.gguf")})
    (args.work_dir / "runs").mkdir(parents=True, exist_ok=True)
    (args.work_dir / "gguf").mkdir(parents=True, exist_ok=True)
    results = []
    if args.search_workers <= 1:
        for task in tasks:
            results.append(_guarded(task))
            _print_search(results[-1])
        return results
    context = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=args.search_workers, mp_context=context) as pool:
        futures = {pool.submit(_guarded, task): task for task in tasks}
        for future in cf.as_completed(futures):
            results.append(future.result())
            _print_search(results[-1])
    return sorted(results, key=lambda r: (r["budget"], r["seed"]))


def _space_tag(space: str) -> str:
    """A space's name for file names (its file's stem when it is a path)."""
    return Path(space).stem if space.endswith(".toml") else space


def _guarded(task: dict) -> dict:
    try:
        return search_task(task)
    except Exception as exc:  # one failed search is a row, not the end of the benchmark
        return {**task, "status": f"failed: {type(exc).__name__}: {peer._first_line(exc)}"}


def _print_search(r: dict) -> None:
    if r["status"] != "ok":
        print(f"search b{r['budget']} s{r['seed']}: {r['status']}", flush=True)
        return
    same = "==" if r["predicted_bytes"] == r["stat_bytes"] else "!="
    print(f"search b{r['budget']} s{r['seed']}: KL {r['kl']:.4f}, predicted {r['predicted_bytes']:,} {same} stat "
          f"{r['stat_bytes']:,} bytes, {r['evaluations']} evaluations in {r['search_s']} s", flush=True)


# ----------------------------------------------------------------------------------------------
# tables


def _stat(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def summarise(targets: list[peer.Row], searches: list[dict], evo_rows: dict, datasets: list[str]) -> list[dict]:
    table = []
    for target in targets:
        mine = [s for s in searches if s["budget"] == target.bytes and s["status"] == "ok"]
        rows = [evo_rows[s["path"]] for s in mine if s["path"] in evo_rows]
        entry = {"target": target.method, "target_bytes": target.bytes, "target_status": target.status,
                 "target_ppl": {d: target.eval.get(d, {}).get("ppl") for d in datasets},
                 "seeds": len(mine), "evo_bytes_max": max((s["stat_bytes"] for s in mine), default=None),
                 "all_predicted_equal_stat": all(s["predicted_bytes"] == s["stat_bytes"] for s in mine),
                 "evo_kl": [s["kl"] for s in mine], "evo_ppl": {}}
        for d in datasets:
            values = [r.eval[d]["ppl"] for r in rows if r.status == "ok" and d in r.eval]
            entry["evo_ppl"][d] = {"values": values, "mean": statistics.mean(values) if values else None,
                                   "std": statistics.stdev(values) if len(values) > 1 else None}
        table.append(entry)
    return table


def render_markdown(table: list[dict], datasets: list[str], llama: list[dict], meta: dict,
                    spending: list[tuple[str, dict]] = ()) -> str:
    labels = [peer.DATASET_LABELS.get(d, d) for d in datasets]
    heads = ["llama.cpp file", "bytes", *[f"{l} PPL" for l in labels], "evo bytes (max of seeds)",
             *[f"evo {l} PPL (mean ± std)" for l in labels], "seeds", "predicted = stat"]
    lines = [f"# evo's searched GGUF vs llama.cpp's recipes at equal file size\n",
             f"`{' '.join(meta['argv'])}`; {meta['seconds']:.0f} s. evo: `--space {meta['space']}`, {meta['generations']} "
             f"generations x {meta['population']}, KL on {meta['samples']} x {meta['calib_len']} calibration tokens; "
             f"perplexity: evo's (transformers GGUF loader), {meta['max_tokens']} tokens in windows of {meta['seq_len']}.\n",
             "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for e in table:
        target_ppl = [f"{e['target_ppl'][d]:.3f}" if e["target_ppl"][d] else e["target_status"] for d in datasets]
        evo_ppl = [_stat(e["evo_ppl"][d]["values"]) for d in datasets]
        lines.append("| " + " | ".join([e["target"], f"{e['target_bytes']:,}", *target_ppl,
                                        f"{e['evo_bytes_max']:,}" if e["evo_bytes_max"] else "-", *evo_ppl,
                                        str(e["seeds"]), "-" if not e["seeds"] else "yes" if e["all_predicted_equal_stat"] else "NO"]) + " |")
    if llama:
        lines += ["", "llama.cpp's own `llama-perplexity` (WikiText-2, same command for both):", "",
                  "| file | bytes | llama-perplexity PPL | prompt tokens/s |", "|---|---|---|---|"]
        for r in llama:
            lp = r["llama_perplexity"] or {}
            ppl = f"{lp['ppl']:.3f} ± {lp['ppl_stderr']:.3f}" if "ppl" in lp else lp.get("error", "not run")
            lines.append(f"| {r['method']} | {r['bytes']:,} | {ppl} | {lp.get('tokens_per_s', '-')} |")
    if spending:
        lines += ["", "Tensor bytes per llama.cpp type (seed 0 of each evo search; llama.cpp's files):", "",
                  "| file | bytes per type |", "|---|---|"]
        lines += [f"| {name} | {_type_line(totals)} |" for name, totals in spending]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------


def run(args, started: float, deadline) -> int:
    from evo.data.corpus import find_builtin

    meta = {"argv": sys.argv, "versions": peer._versions(), "device": args.device, "space": args.space,
            "generations": args.generations,
            "population": args.population, "samples": args.samples, "calib_len": args.calib_len,
            "max_tokens": args.max_tokens, "seq_len": args.seq_len, "seeds": args.seeds}
    for dataset in args.datasets:
        meta[f"data_{dataset}"] = str(find_builtin(dataset))
    from evo.search.space import SearchSpace

    if getattr(SearchSpace.load(args.space), "format", None) != "gguf":  # a bad name fails before any work
        raise peer.BenchError(f"--space {args.space} is not a GGUF space (format = \"gguf\"): use gguf or gguf_gptq")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        model = str(tiny_model_dir(args.work_dir / "tiny-llama"))
        source = None
    else:
        model = args.model
        source = peer.source_gguf(args.model)
    if args.llama_bin is not None and source is not None:
        missing = [t for t in peer.TOOLS if not (args.llama_bin / t).is_file()]
        if missing:
            raise peer.BenchError(f"--llama-bin {args.llama_bin} lacks {', '.join(missing)}")
        targets = llamacpp_targets(args, source, deadline)
        meta["targets"] = "llama.cpp llama-quantize --allow-requantize with imatrix (llamacpp_peer.py)"
    else:
        print("no llama.cpp binaries (--llama-bin) or no source GGUF: targets are evo's encodings of the recipes; "
              "llama-perplexity skipped", flush=True)
        targets = evo_encoded_targets(args, model)
        meta["targets"] = "evo-encoded recipes (no llama.cpp)"
    targets = [t for t in targets if t.status == "ok"] + [t for t in targets if t.status != "ok"]
    budgets = sorted({t.bytes for t in targets if t.status == "ok"})
    print("targets: " + ", ".join(f"{t.method} {t.bytes:,}" for t in targets), flush=True)
    tic = time.perf_counter()
    searches = run_searches(args, model, budgets, deadline)
    meta["search_s"] = round(time.perf_counter() - tic, 1)

    # evo's perplexity of every file (llama.cpp's cached in the peer's work dir when it scored them)
    ns = argparse.Namespace(**vars(args))
    ns.work_dir = args.peer_work_dir if args.llama_bin is not None and not args.smoke else args.work_dir
    evaluator = peer.Evaluator(ns, deadline)
    evo_rows = {}
    try:
        for target in targets:
            evaluator.add(target)
        for s in searches:
            if s["status"] == "ok":
                row = peer.Row(method=f"evo {_space_tag(args.space)} search b{s['budget']} seed {s['seed']}", path=s["path"], kind="gguf",
                               bytes=s["stat_bytes"])
                evo_rows[s["path"]] = row
                evaluator.add(row)
        evaluator.wait()
    finally:
        evaluator.close()
    table = summarise(targets, searches, evo_rows, args.datasets)

    llama = []
    if args.llama_bin is not None and not args.smoke:
        text = find_builtin("wikitext2")
        q3 = next((t for t in targets if t.qtype == LLAMA_PPL_RECIPE and not t.embedding and t.status == "ok"), None)
        if q3 is not None:
            mine = [r for p, r in evo_rows.items() if r.bytes <= q3.bytes and r.status == "ok" and "wikitext2" in r.eval
                    and any(s["path"] == p and s["budget"] == q3.bytes for s in searches)]
            best = min(mine, key=lambda r: r.eval["wikitext2"]["ppl"], default=None)
            for row in [q3] + ([best] if best else []):
                if deadline is None or time.time() < deadline:
                    row.llama_perplexity = peer.llama_perplexity(args.llama_bin, row, text, chunks=args.llama_ppl_chunks,
                                                                 ctx=args.seq_len, threads=args.jobs, ngl=0)
                llama.append({"method": row.method, "bytes": row.bytes, "llama_perplexity": row.llama_perplexity})
    meta["seconds"] = round(time.time() - started, 1)
    bad = [s for s in searches if s["status"] == "ok" and s["predicted_bytes"] != s["stat_bytes"]]
    over = [s for s in searches if s["status"] == "ok" and s["stat_bytes"] > s["budget"]]
    record = {"meta": meta, "table": table, "searches": searches, "targets": [asdict(t) for t in targets],
              "evo_rows": [asdict(r) for r in evo_rows.values()], "llama_perplexity": llama}
    (args.out / "results.json").write_text(json.dumps(record, indent=1, default=str))
    spending = [(t.method, type_bytes(Path(t.path))) for t in targets if t.status == "ok" and t.kind == "gguf"
                and Path(t.path).is_file()]
    spending += [(f"evo {_space_tag(args.space)} search b{s['budget']} seed {s['seed']}", s["type_bytes"]) for s in searches
                 if s["status"] == "ok" and s["seed"] == 0]
    record["type_bytes"] = spending
    (args.out / "results.json").write_text(json.dumps(record, indent=1, default=str))
    markdown = render_markdown(table, args.datasets, llama, meta, spending)
    (args.out / "results.md").write_text(markdown)
    print(markdown)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'} in {meta['seconds']:.0f} s")
    if bad or over:
        print(f"error: {len(bad)} file(s) whose stat bytes differ from the prediction, {len(over)} over the budget",
              file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    deadline = started + args.deadline_s if args.deadline_s else None
    from evo.errors import EvoError

    try:
        return run(args, started, deadline)
    except (peer.BenchError, EvoError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
