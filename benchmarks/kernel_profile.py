"""Where a GPU call's time goes: torch.profiler's kernels (or, on a CPU, its ops' self time) grouped by
kind, against the wall. Shared by profile_eval.py (one evaluation of the search's evaluator) and the
shape-only benchmarks (attention_paths.py, forward_floor.py: `--profile`).

Kernels inside a replayed CUDA graph are reported one by one (CUPTI traces graph nodes), so a
reduce-overhead call is broken down as an eager one is.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

KINDS = ("gemm", "attention", "elementwise", "reductions-softmax-KL", "copies", "other")
TOP = 12


def kind_of(name: str) -> str:
    """The kind of a CUDA kernel or a CPU op, from its name (cuBLAS/CUTLASS, flash/efficient attention,
    Inductor's triton_poi/red/per/tem kernels, ATen's own)."""
    n = name.lower()
    if any(t in n for t in ("flash", "attention", "fmha", "sdpa", "scaled_dot_product")):
        return "attention"
    if any(t in n for t in ("gemm", "gemv", "cutlass", "xmma", "nvjet", "cublas", "triton_tem", "aten::mm",
                            "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "splitk")):
        return "gemm"
    if any(t in n for t in ("triton_red", "triton_per", "softmax", "logsumexp", "reduce", "amax", "aten::sum",
                            "aten::max", "gather", "scatter", "aten::kl", "topk", "aten::log", "aten::exp")):
        return "reductions-softmax-KL"
    if any(t in n for t in ("memcpy", "memset", "copy", "aten::to", "aten::clone", "aten::cat", "fill",
                            "aten::contiguous", "aten::zeros", "aten::empty")):
        return "copies"
    if any(t in n for t in ("triton_poi", "elementwise", "vectorized", "pointwise", "aten::")):
        return "elementwise"
    return "other"


def union_us(intervals: list[tuple[float, float]]) -> float:
    """Microseconds covered by at least one interval (kernels of several streams may overlap)."""
    busy, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        busy += stop - max(start, end)
        end = stop
    return busy


CUBLAS_WORKSPACES = ("none", "torch")  # evo search --cublas-workspace none (gemm_workspace), or torch's default


def cublas_workspace_option(text: str) -> str:
    """--cublas-workspace: "none" sets evo.evaluate.gemm_workspace's variables for this process, as `evo
    search --cublas-workspace none` does (at once: torch reads them at its first cuBLAS call); "torch"
    leaves torch's default, as `evo search` runs by default (the comparison needs a process of its own).
    Anything else is one line (argparse, exit 2)."""
    import argparse

    if text not in CUBLAS_WORKSPACES:
        raise argparse.ArgumentTypeError(f"{text!r}: give torch (torch's default, as evo search runs) or none")
    if text == "none":
        from evo.evaluate.gemm_workspace import gemms_without_workspace

        print(gemms_without_workspace(), flush=True)
    return text


def add_cublas_workspace_option(parser) -> None:
    """--cublas-workspace on a benchmark's parser (cublas_workspace_option; default torch, as `evo search` runs)."""
    parser.add_argument("--cublas-workspace", type=cublas_workspace_option, default="torch",
                        help="torch: torch's default workspace, as `evo search` runs; none: cuBLAS without a "
                             "workspace, as `evo search --cublas-workspace none` (evo/evaluate/gemm_workspace.py; "
                             "a comparison needs a process of its own)")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(function: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    """The wall ms of `repeats` calls of function(), each synchronized with the device before and after."""
    times = []
    for _ in range(repeats):
        sync(device)
        tic = time.perf_counter()
        function()
        sync(device)
        times.append(1000 * (time.perf_counter() - tic))
    return times


def profile_table(run: Callable[[], object], device: torch.device) -> dict:
    """torch.profiler of run(): kernel (or CPU op) time against the wall, top kernels, time by kind."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    with profile(activities=activities) as prof:
        tic = time.perf_counter()
        run()
        sync(device)
        wall_us = 1e6 * (time.perf_counter() - tic)
    by_name: dict[str, list[float]] = {}
    if cuda:
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        intervals = [(e.time_range.start, e.time_range.end) for e in kernels]
        for e in kernels:
            entry = by_name.setdefault(e.name, [0.0, 0])
            entry[0] += e.time_range.elapsed_us()
            entry[1] += 1
        busy_us = union_us(intervals)
        what = "GPU kernels"
        host = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
        idle = idle_spans(kernels, min(e.time_range.start for e in host) if host else None)
        idle["host_top"] = host_ops(prof)
    else:
        idle = {}
        for e in prof.key_averages():
            if e.self_cpu_time_total > 0:
                by_name[e.key] = [float(e.self_cpu_time_total), e.count]
        busy_us = sum(v[0] for v in by_name.values())
        what = "CPU ops (self time)"
    total = sum(v[0] for v in by_name.values()) or 1.0
    top = sorted(by_name.items(), key=lambda item: -item[1][0])[:TOP]
    kinds = dict.fromkeys(KINDS, 0.0)
    kind_calls = dict.fromkeys(KINDS, 0)
    for name, (us, calls) in by_name.items():
        kinds[kind_of(name)] += us
        kind_calls[kind_of(name)] += calls
    return {
        "what": what,
        "profiled_wall_ms": wall_us / 1000,
        "busy_ms": busy_us / 1000,
        "kernel_ms": total / 1000,
        "launches": int(sum(v[1] for v in by_name.values())),
        "busy_share_of_wall": busy_us / wall_us if wall_us else None,
        "top": [{"name": name[:120], "ms": us / 1000, "share": us / total, "calls": calls, "kind": kind_of(name)}
                for name, (us, calls) in top],
        "by_kind_ms": {k: v / 1000 for k, v in kinds.items()},
        "by_kind_share": {k: v / total for k, v in kinds.items()},
        "by_kind_calls": kind_calls,
        **idle,
    }


def host_ops(prof, top: int = 8) -> list[dict]:
    """The host's busiest ops during the profiled call (self CPU time): what the GPU waits on when
    the lead before its first kernel is long (guards, CUDA-graph bookkeeping, launches)."""
    ops = sorted((e for e in prof.key_averages() if e.self_cpu_time_total > 0), key=lambda e: -e.self_cpu_time_total)
    return [{"name": e.key[:100], "self_ms": e.self_cpu_time_total / 1000, "calls": e.count} for e in ops[:top]]


def idle_spans(kernels: list, host_start: float | None) -> dict:
    """Where the GPU waited: from the first host event to the first kernel (launch overhead before
    any work), and the widest gaps between one kernel's end and the next one's start, with the
    kernels around them (a gap inside a CUDA graph is ~1 µs; a wide one is the host catching up)."""
    ordered = sorted(kernels, key=lambda e: e.time_range.start)
    if not ordered:
        return {}
    gaps, end, before = [], ordered[0].time_range.end, ordered[0].name
    for e in ordered[1:]:
        if e.time_range.start > end:
            gaps.append((e.time_range.start - end, before, e.name))
        if e.time_range.end >= end:
            end, before = e.time_range.end, e.name
    gaps.sort(key=lambda gap: -gap[0])
    lead = ordered[0].time_range.start - host_start if host_start is not None else None
    return {"lead_ms": lead / 1000 if lead is not None else None,
            "gaps_ms": sum(gap[0] for gap in gaps) / 1000, "gap_count": len(gaps),
            "widest_gaps": [{"ms": us / 1000, "after": a[:80], "before": b[:80]} for us, a, b in gaps[:5]]}


def kernel_lines(name: str, profile: dict) -> list[str]:
    """Markdown of one profile_table: the time by kind on one line, then the top kernels' table."""
    p = profile
    lines = [f"{name}: {p['what']} {p['kernel_ms']:.2f} ms in {p['launches']} launches "
             f"(busy {p['busy_ms']:.2f} of {p['profiled_wall_ms']:.2f} ms wall); by kind: " + ", ".join(
                 f"{k} {v:.2f} ms ({100 * p['by_kind_share'][k]:.0f} %, {p['by_kind_calls'][k]} launches)"
                 for k, v in p["by_kind_ms"].items() if v),
             "", "| kernel | kind | calls | ms | share |", "|---|---|---|---|---|"]
    lines += [f"| `{t['name'][:90]}` | {t['kind']} | {t['calls']} | {t['ms']:.3f} | {100 * t['share']:.1f} % |"
              for t in p["top"]]
    if p.get("widest_gaps") is not None:
        lead = f"{p['lead_ms']:.2f} ms" if p.get("lead_ms") is not None else "?"
        lines += ["", f"idle GPU: {lead} from the first host event to the first kernel; {p['gaps_ms']:.2f} ms in "
                  f"{p['gap_count']} gaps between kernels, the widest:"]
        lines += [f"- {g['ms']:.3f} ms after `{g['after'][:60]}`, before `{g['before'][:60]}`" for g in p["widest_gaps"]]
    if p.get("host_top"):
        lines += ["", "host ops by self time: " + ", ".join(
            f"`{h['name'][:60]}` {h['self_ms']:.2f} ms ×{h['calls']}" for h in p["host_top"])]
    return lines
