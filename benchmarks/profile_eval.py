"""Where one evaluation's time goes (issue 19): the evaluator built as benchmarks/search_throughput.py
builds it (a run directory over the default model and space: calibration set, dense reference), one
genome, and per forward + KL variant

  - the wall ms of a full evaluation (--samples × --seq-len) and of a 4 × --seq-len stage (synchronized,
    median of --repeats), of the forward alone and of the KL alone, and the warm-up (compilation) s;
  - a torch.profiler table of one full evaluation: the GPU's kernel time against the wall (idle GPU =
    launch- or host-bound), the top 12 kernels by time with their share, and the time grouped by kind
    (gemm / attention / elementwise (triton pointwise) / reductions-softmax-KL / copies / other).
    On a CPU the same table is of the CPU ops (self time).

Variants (--variants, comma-separated, run in that order):
  default             torch.compile "default", the KL reduction of session 24 (what the search runs)
  default_kl_old      the same compiled forward, the KL before session 24 (float32 log-softmax copy)
  eager               no compilation, the session-24 KL
  eager_kl_old        no compilation, the old KL
  cuda_graphs         torch.compile "reduce-overhead" (CUDA graphs; levels copied in place)
  cuda_graphs_kl_old  the same with the old KL
  kl_chunked          "default", the body once, then head + KL 4,096 tokens at a time
A compiled variant on a machine without CUDA is "skipped: CUDA only". --deadline-s bounds the whole
run: a variant that would not fit in what is left (a compiled one needs --compile-need-s) is skipped,
saying so. Last, the KL reduction alone on random logits of --kl-shape × the vocabulary, old and new,
in float32 and bfloat16 (eager; also compiled on CUDA when time is left), old and new alternating
--repeats times: the least ms of each and the ratio old / new.

  # on one H200 (≤ 200 s):
  python benchmarks/profile_eval.py --device cuda --variants default,default_kl_old,eager,eager_kl_old \
      --deadline-s 190 --out $OUT/profile_eval
  python benchmarks/profile_eval.py --device cuda --variants cuda_graphs,cuda_graphs_kl_old,kl_chunked \
      --deadline-s 190 --out $OUT/profile_eval_graphs
  # the KL reduction alone on a CPU (no model): old / new on 2 × 512 × 49,152 float32 and bfloat16 logits
  python benchmarks/profile_eval.py --device cpu --kl-only --kl-shape 2,512 --repeats 5 --out runs/kl-cpu
  # CPU smoke (a few minutes on 2 cores):
  python benchmarks/profile_eval.py --device cpu --samples 2 --seq-len 64 --repeats 2 --kl-shape 2,512 \\
      --out runs/profile-eval-cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's evo, not an installed one

from _experiments import share_loaded_models  # noqa: E402
from evo.constants import FINAL_STAGE, SCREEN_STAGE  # noqa: E402
from evo.evaluate.fastforward import FastForward  # noqa: E402
from evo.evaluate.metrics import topk_kl_sum, topk_kl_sum_reference  # noqa: E402
from evo.search.loop import SearchSpec, open_session  # noqa: E402
from kernel_profile import kernel_lines, profile_table, sync, timed_ms  # noqa: E402
from search_throughput import H200_BF16_TFLOPS, KL_CHUNK, flops_per_evaluation  # noqa: E402


@dataclass(frozen=True)
class Variant:
    compile: str  # torch.compile mode of FastForward ("off": eager)
    kl_chunk: int = 0
    old_kl: bool = False


VARIANTS = {
    "default": Variant("default"),
    "default_kl_old": Variant("default", old_kl=True),
    "eager": Variant("off"),
    "eager_kl_old": Variant("off", old_kl=True),
    "cuda_graphs": Variant("reduce-overhead"),
    "cuda_graphs_kl_old": Variant("reduce-overhead", old_kl=True),
    "kl_chunked": Variant("default", kl_chunk=KL_CHUNK),
}
DEFAULT_VARIANTS = "default,default_kl_old,eager,cuda_graphs,kl_chunked,cuda_graphs_kl_old,eager_kl_old"


def _median_ms(function, device: torch.device, repeats: int) -> float:
    return statistics.median(timed_ms(function, device, repeats))


_FORWARDS: dict[tuple, FastForward] = {}  # (mode, chunk, old KL): compiled graphs shared between variants


def forward_for(evaluator, variant: Variant) -> FastForward:
    key = (variant.compile, variant.kl_chunk)
    if key not in _FORWARDS:
        _FORWARDS[key] = FastForward(evaluator.model, variant.compile, evaluator.device, kl_chunk=variant.kl_chunk)
    if not variant.old_kl:
        return _FORWARDS[key]
    if (*key, "old") not in _FORWARDS:
        _FORWARDS[(*key, "old")] = _FORWARDS[key].with_kl(topk_kl_sum_reference)
    return _FORWARDS[(*key, "old")]


def run_variant(name: str, variant: Variant, evaluator, config, args) -> dict:
    device = evaluator.device
    evaluator.forward = forward = forward_for(evaluator, variant)
    evaluator.fitness = dataclasses.replace(evaluator.fitness, compile=variant.compile, kl_chunk=variant.kl_chunk)
    tic = time.perf_counter()
    for stage in (FINAL_STAGE, SCREEN_STAGE):  # compilation / CUDA-graph capture of both shapes
        evaluator.evaluate(config, stage)
    sync(device)
    row: dict = {"compile": variant.compile, "compiled": forward.compiled, "fallback": forward.fallback,
                 "kl_chunk": forward.kl_chunk, "kl": "old" if variant.old_kl else "new",
                 "level_copies": evaluator._copy_levels(), "warmup_s": time.perf_counter() - tic}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    row["full_ms"] = _median_ms(lambda: evaluator.evaluate(config, FINAL_STAGE), device, args.repeats)
    row["stage_ms"] = _median_ms(lambda: evaluator.evaluate(config, SCREEN_STAGE), device, args.repeats)
    sequences, tokens = evaluator.stage_shape(FINAL_STAGE)
    ids = evaluator._device_ids[:sequences, :tokens]
    if not forward.kl_chunk:  # the two halves apart (the KL on a kept copy of the logits)
        row["forward_ms"] = _median_ms(lambda: forward.logits(ids, copy_graph_output=False), device, args.repeats)
        logits = forward.logits(ids)
        reference = [part[:sequences, :tokens] for part in evaluator._reference_rows]
        row["kl_ms"] = _median_ms(lambda: float(forward.kl_sum(logits, *reference)), device, args.repeats)
        del logits
    if device.type == "cuda":
        row["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    row["kl_value"] = evaluator.evaluate(config, FINAL_STAGE)
    row["profile"] = profile_table(lambda: evaluator.evaluate(config, FINAL_STAGE), device)
    return row


def kl_alone(args, vocab: int, device: torch.device, deadline: float, top_k: int, samples: int) -> dict:
    """Old vs new KL reduction on random logits [n, L, vocab] (a dense reference of top_k + samples)."""
    n, length = (int(x) for x in args.kl_shape.split(","))
    generator = torch.Generator(device=device).manual_seed(0)
    dense = torch.randn(n, length, vocab, device=device, generator=generator) * 3
    log_p = torch.log_softmax(dense, dim=-1)
    values, ids = log_p.topk(top_k, dim=-1)
    log_p.scatter_(-1, ids, float("-inf"))
    tail = torch.logsumexp(log_p, dim=-1)
    draws = torch.multinomial(torch.exp(log_p - tail[..., None]).reshape(-1, vocab), samples, replacement=True,
                              generator=generator).reshape(n, length, samples)
    reference = (ids, values, tail, draws, log_p.gather(-1, draws))
    candidate = dense + 0.3 * torch.randn(dense.shape, device=device, generator=generator)
    del log_p, dense
    out: dict = {"shape": [n, length, vocab], "top_k": top_k, "tail_samples": samples}
    modes = ["eager"] + (["compiled"] if device.type == "cuda" else [])
    for mode in modes:
        for dtype in (torch.float32, torch.bfloat16):
            need = args.compile_need_s / 2 if mode == "compiled" else 2.0  # two KL compilations
            if deadline - time.perf_counter() < need:
                out[f"{mode}_{str(dtype)[6:]}"] = "skipped: out of time"
                continue
            logits = candidate.to(dtype)
            row = {}
            runs = {label: torch.compile(function, dynamic=False) if mode == "compiled" else function
                    for label, function in (("old", topk_kl_sum_reference), ("new", topk_kl_sum))}
            times: dict[str, list[float]] = {label: [] for label in runs}
            for label, run in runs.items():
                row[f"{label}_value"] = float(run(logits, *reference))  # and the warm-up (compilation)
            if device.type == "cuda":
                for label, run in runs.items():  # the peak of each alone
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                    before = torch.cuda.memory_allocated(device)
                    float(run(logits, *reference))
                    row[f"{label}_peak_gib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**30
            for _ in range(args.repeats):  # alternating, so that a change of load hits both
                for label, run in runs.items():
                    times[label].append(_median_ms(lambda: float(run(logits, *reference)), device, 1))
            for label in runs:
                row[f"{label}_ms"] = min(times[label])
                row[f"{label}_median_ms"] = statistics.median(times[label])
            row["old_over_new"] = row["old_ms"] / row["new_ms"]
            row["relative_difference"] = (row["new_value"] - row["old_value"]) / row["old_value"]
            out[f"{mode}_{str(dtype)[6:]}"] = row
            del logits
    return out


def render(report: dict) -> str:
    lines = [f"model {report['model']}, full evaluation {report['full_shape'][0]} × {report['full_shape'][1]} tokens, "
             f"stage {report['stage_shape'][0]} × {report['stage_shape'][1]}; FLOP limit {report['limit_ms']:.1f} ms "
             f"at {report['peak_tflops']:.0f} TFLOP/s; device {report['device']}", ""]
    lines.append("| variant | compile | KL | full ms | × limit | stage ms | forward ms | KL ms | warm-up s | "
                 "busy / wall (profiled) | launches | GPU peak GiB |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, row in report["variants"].items():
        if "skipped" in row:
            lines.append(f"| {name} | {row['skipped']} |||||||||||")
            continue
        p = row["profile"]
        fmt = lambda v: f"{v:.1f}" if isinstance(v, (int, float)) else "–"  # noqa: E731
        lines.append(f"| {name} | {row['compile']}{'' if row['compiled'] or row['compile'] == 'off' else ' (eager)'} | "
                     f"{row['kl']} | {row['full_ms']:.1f} | {row['full_ms'] / report['limit_ms']:.2f} | "
                     f"{row['stage_ms']:.1f} | {fmt(row.get('forward_ms'))} | {fmt(row.get('kl_ms'))} | "
                     f"{row['warmup_s']:.1f} | {p['busy_ms']:.1f} / {p['profiled_wall_ms']:.1f} "
                     f"({100 * (p['busy_share_of_wall'] or 0):.0f} %) | {p['launches']} | {fmt(row.get('gpu_peak_gib'))} |")
    for name, row in report["variants"].items():
        if "skipped" in row:
            continue
        lines += [""] + kernel_lines(name, row["profile"])
    lines += [""] + render_kl(report.get("kl_alone") or {"skipped": "not run"})
    lines += [f"", f"wall {report['seconds']:.0f} s (setup {report['setup_s']:.0f} s)"]
    return "\n".join(lines)


def render_kl(kl: dict) -> list[str]:
    if "skipped" in kl:
        return [f"KL reduction alone: {kl['skipped']}"]
    lines = [f"KL reduction alone on {' × '.join(map(str, kl['shape']))} logits (top {kl['top_k']} + "
             f"{kl['tail_samples']} tail samples): old (float32 log-softmax copy) vs new"]
    for key, row in kl.items():
        if isinstance(row, dict):
            peak = (f", memory beyond the inputs {row['old_peak_gib']:.2f} / {row['new_peak_gib']:.2f} GiB"
                    if "old_peak_gib" in row else "")
            lines.append(f"  {key}: old {row['old_ms']:.1f} ms, new {row['new_ms']:.1f} ms, old/new "
                         f"{row['old_over_new']:.2f}, values differ by {row['relative_difference']:+.1e}{peak}")
        elif isinstance(row, str):
            lines.append(f"  {key}: {row}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--space", default="default")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--stage-sequences", type=int, default=4, help="sequences of the smaller stage timed")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated from {list(VARIANTS)} or 'all'")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--kl-shape", default=None, help="n,L of the KL-alone benchmark (default: --samples,--seq-len)")
    parser.add_argument("--deadline-s", type=float, default=190.0, help="wall seconds for the whole run")
    parser.add_argument("--compile-need-s", type=float, default=90.0, help="seconds left that a compiled variant "
                        "needs to start (its compilation); one over an already compiled forward a quarter, an eager "
                        "one a sixth")
    parser.add_argument("--peak-tflops", type=float, default=H200_BF16_TFLOPS)
    parser.add_argument("--kl-only", action="store_true", help="only the KL reduction alone (no model): "
                        "--vocab, top 256 + 16 tail samples")
    parser.add_argument("--vocab", type=int, default=49152, help="vocabulary of --kl-only (SmolLM2's)")
    parser.add_argument("--out", default="runs/profile-eval")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    deadline = started + args.deadline_s
    if args.kl_only:
        from evo.evaluate.reference import DEFAULT_TAIL_SAMPLES, DEFAULT_TOP_K

        args.kl_shape = args.kl_shape or f"{args.samples},{args.seq_len}"
        result = {"args": vars(args), "kl_alone": kl_alone(args, args.vocab, torch.device(args.device), deadline,
                                                            DEFAULT_TOP_K, DEFAULT_TAIL_SAMPLES)}
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "kl_alone.json").write_text(json.dumps(result, indent=2) + "\n")
        print("\n".join(render_kl(result["kl_alone"])), flush=True)
        return 0
    names = tuple(VARIANTS) if args.variants == "all" else tuple(v for v in args.variants.split(",") if v)
    unknown = set(names) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}: use {list(VARIANTS)}")
    args.kl_shape = args.kl_shape or f"{args.samples},{args.seq_len}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    share_loaded_models()
    from evo.modelio import auto_dtype_name, load_model
    from evo.search.budget import early_budget_range
    from evo.search.space import SearchSpace

    loaded = load_model(args.model, dtype=auto_dtype_name(args.device), device=args.device, trust_remote_code=False)
    reach = early_budget_range(SearchSpace.load(args.space), loaded)
    stage_sequences = min(args.stage_sequences, args.samples)
    spec = SearchSpec(budget_bytes=(reach.smallest + reach.largest) // 2, model=args.model, space=args.space,
                      generations=0, population=2, samples=args.samples, seq_len=args.seq_len,
                      clusters=min(8, args.samples), screen_sequences=stage_sequences, screen_tokens=args.seq_len)
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    session = open_session(spec, run_dir, resume=False, device=args.device,
                           status=lambda m: print(f"[setup] {m}", flush=True))
    evaluator = session.evaluator
    config = session.config_of([0] * len(session.genes))
    info = session.loaded.info
    limit_ms = 1000 * flops_per_evaluation(info, session.loaded.model.config, args.samples, args.seq_len) / (
        args.peak_tflops * 1e12)
    report: dict = {"args": vars(args), "model": args.model, "device": torch.cuda.get_device_name(device)
                    if device.type == "cuda" else "cpu", "full_shape": list(evaluator.stage_shape(FINAL_STAGE)),
                    "stage_shape": list(evaluator.stage_shape(SCREEN_STAGE)), "limit_ms": limit_ms,
                    "peak_tflops": args.peak_tflops, "setup_s": time.perf_counter() - started, "variants": {}}

    def write() -> None:
        report["seconds"] = time.perf_counter() - started
        (out / "profile_eval.json").write_text(json.dumps(report, indent=2) + "\n")

    for name in names:
        variant = VARIANTS[name]
        left = deadline - time.perf_counter()
        if variant.compile == "off":
            need = args.compile_need_s / 6
        else:  # a variant over an already compiled forward compiles only its KL
            need = args.compile_need_s / (4 if (variant.compile, variant.kl_chunk) in _FORWARDS else 1)
        if variant.compile != "off" and device.type != "cuda":
            row = {"skipped": "skipped: CUDA only"}
        elif left < need:
            row = {"skipped": f"skipped: out of time ({left:.0f} s left, needs ~{need:.0f} s)"}
        else:
            print(f"[{name}] {variant}", flush=True)
            try:
                row = run_variant(name, variant, evaluator, config, args)
            except Exception as exc:  # noqa: BLE001 — one variant failing must not lose the others
                row = {"skipped": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
            finally:
                evaluator.restore()
        report["variants"][name] = row
        print(f"[{name}] " + (row["skipped"] if "skipped" in row else
                              f"full {row['full_ms']:.1f} ms, stage {row['stage_ms']:.1f} ms, warm-up {row['warmup_s']:.1f} s"),
              flush=True)
        write()
    if deadline - time.perf_counter() > 5:
        reference = evaluator.reference
        report["kl_alone"] = kl_alone(args, info.vocab_size, device, deadline,
                                      reference.top_k, int(evaluator._reference_rows[3].shape[-1]))
    else:
        report["kl_alone"] = {"skipped": "out of time"}
    session.lock.release()
    write()
    text = render(report)
    (out / "profile_eval.md").write_text(text + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
