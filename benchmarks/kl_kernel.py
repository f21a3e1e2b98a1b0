"""The top-k KL of one evaluation alone (issue 19): the KL's row sums by torch ops (compiled, Inductor's
passes) against the one-pass Triton kernel (evo/evaluate/_kl_triton.py) at several program shapes,
on random logits of an evaluation's size, side by side in one process. Picks the kernel's CHUNK,
WARPS and STEPS: the H200 profile of session 27 put the kernel at 2.44 ms for 3.2 GB of logits, ~3× its
memory time; its 8,192-logit programs (32 logits a thread) may leave too few programs resident per SM,
and a program that reduces one chunk has nothing to load meanwhile (STEPS > 1: several chunks a program).

Rows of the table:
  kl torch ops      topk_kl_sum(row_sums="torch") compiled ("default"), the whole KL
  kl kernel         topk_kl_sum compiled, the kernel at its shipped CHUNK × WARPS (× STEPS), the whole KL
  sums CxW[xS][w][l] _kl_triton.row_sums(chunk=C, warps=W, steps=S, words=w, lean=l) alone (S chunks a program,
                    1 if left out; w: each chunk laid out [C / 32, 32], one bitmask load a word; l: three block
                    reductions a chunk, not four, the tail's peak only where its sum underflows; the bitmask
                    kept from the first call, as in a search), with the largest difference of the
                    tail's log-sum-exp from torch's float64 sums on the first 256 rows
Each is the median of --repeats synchronized calls after one warm-up call.

  # on one H200 (≈ 1 min; shapes only, no bring-up; needs Triton, which the device's torch has):
  python benchmarks/kl_kernel.py --device cuda --out $OUT/kl_kernel
  # CPU smoke (torch ops only; the kernel rows say why they are skipped):
  python benchmarks/kl_kernel.py --device cpu --rows 64 --vocab 4096 --repeats 2 --out runs/kl-kernel-cpu
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's evo, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention_paths import device_option, write_report  # noqa: E402
from evo.evaluate import kl_sums  # noqa: E402
from evo.evaluate.metrics import topk_kl_sum  # noqa: E402
from kernel_profile import timed_ms  # noqa: E402

DEFAULT_CONFIGS = "4096x4x3w,4096x4x3wl,2048x2x6wl,2048x4x6wl,8192x8x2wl,4096x8x3wl,1024x2x4wl,2048x4x3wl,8192x8wl"
CHECK_ROWS = 256
SHAPE_CONSTANTS = ("CHUNK", "WARPS", "STEPS", "WORDS", "LEAN")  # _kl_triton's, in the order of parse_configs's tuples


def shipped_shape() -> tuple[int, int, int, bool, bool]:
    """_kl_triton's program shape as it is now, as parse_configs writes one (needs Triton)."""
    from evo.evaluate import _kl_triton

    return tuple(getattr(_kl_triton, constant) for constant in SHAPE_CONSTANTS)


def use_shape(config: tuple[int, int, int, bool, bool]) -> None:
    """Set _kl_triton's constants to `config` (parse_configs's tuple): every row_sums call that names no
    shape, the evaluator's KL included, then runs the kernel at it."""
    from evo.evaluate import _kl_triton

    for constant, value in zip(SHAPE_CONSTANTS, config, strict=True):
        setattr(_kl_triton, constant, value)


def parse_configs(text: str) -> list[tuple[int, int, int, bool, bool]]:
    """CxW[xS][w][l],... → [(chunk, warps, steps, words, lean)]: chunk a power of 2 ≥ 128, warps one of 1, 2,
    4, 8, 16, 32, steps (chunks a program walks, 1 if left out) 1 … 64, then w for chunks laid out
    [C / 32, 32] (one bitmask load a word) and l for the lean reductions; anything else ends the benchmark
    with one line."""
    configs = []
    for part in filter(None, text.split(",")):
        text_part = part.lower()
        lean = text_part.endswith("l")
        text_part = text_part.removesuffix("l")
        words = text_part.endswith("w")
        try:
            chunk, warps, *steps = (int(v) for v in text_part.removesuffix("w").split("x"))
            steps = steps or [1]
            (steps,) = steps
        except ValueError:
            raise SystemExit(f"config {part!r}: write it as CHUNKxWARPS[xSTEPS][w][l], e.g. 4096x4x3wl") from None
        if chunk < 128 or chunk & (chunk - 1) or warps not in (1, 2, 4, 8, 16, 32) or not 1 <= steps <= 64:
            raise SystemExit(f"config {part!r}: CHUNK is a power of 2 ≥ 128, WARPS one of 1, 2, 4, 8, 16, 32 and "
                             "STEPS 1 … 64")
        configs.append((chunk, warps, steps, words, lean))
    return configs


def name(config: tuple[int, int, int, bool, bool]) -> str:
    """CxW, CxWxS for programs that walk S chunks, then w for the [C / 32, 32] layout, l for lean reductions."""
    chunk, warps, steps, words, lean = config
    return f"{chunk}x{warps}" + (f"x{steps}" if steps > 1 else "") + ("w" if words else "") + ("l" if lean else "")


def median_ms(function, device: torch.device, repeats: int) -> tuple[float, float]:
    """(median, min) ms of `repeats` synchronized calls after one warm-up call."""
    function()
    times = timed_ms(function, device, repeats)
    return statistics.median(times), min(times)


def inputs(rows: int, vocab: int, k: int, samples: int, device: torch.device, seed: int):
    """bf16 logits [rows, vocab] (float32 on a CPU) and the reference rows of a nearby distribution."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    logits = (3 * torch.randn(rows, vocab, generator=generator)).to(device, dtype)
    reference = logits.float() + 0.5 * torch.randn(rows, vocab, generator=generator).to(device)
    log_p = torch.log_softmax(reference, -1)
    del reference
    top = log_p.topk(k, dim=-1)
    tail = torch.log1p(-top.values.exp().sum(-1).clamp(max=1 - 1e-6))
    draws = torch.randint(0, vocab, (rows, samples), generator=generator).to(device)
    rows_ = (top.indices, top.values, tail, draws, log_p.gather(-1, draws))
    del log_p
    return logits, rows_


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=device_option, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", type=int, default=64 * 512, help="tokens of the evaluation (64 × 512)")
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="the kernel's CHUNKxWARPS[xSTEPS][w][l], "
                        "comma-separated")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/kl-kernel")
    args = parser.parse_args(argv)
    configs = parse_configs(args.configs)
    if args.rows < 1 or args.samples < 0 or not 1 <= args.k < args.vocab:
        raise SystemExit(f"--rows {args.rows}, --k {args.k}, --vocab {args.vocab}, --samples {args.samples}: "
                         "give at least 1 row, 1 <= k < vocab and samples >= 0")
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logits, rows = inputs(args.rows, args.vocab, args.k, args.samples, device, args.seed)
    compiled = device.type == "cuda"

    def whole_kl(name: str, kl, **extra) -> dict:  # the whole KL, compiled as the search compiles it
        function = torch.compile(kl, dynamic=False) if compiled else kl
        value = float(function(logits, *rows))
        ms, least = median_ms(lambda: float(function(logits, *rows)), device, args.repeats)
        return {"run": name, "median_ms": ms, "min_ms": least, "kl_per_token": value / args.rows, **extra}

    results = [whole_kl("kl torch ops", functools.partial(topk_kl_sum, row_sums="torch"))]
    if not kl_sums.available(logits):
        why = "needs CUDA and Triton" if not kl_sums._FAILED else f"the kernel failed: {kl_sums._FAILED[0]}"
        results += [{"run": "kl kernel", "skipped": why}] + [{"run": f"sums {name(c)}", "skipped": why} for c in configs]
    else:
        from evo.evaluate import _kl_triton

        results.append(whole_kl("kl kernel", topk_kl_sum, shipped=name(shipped_shape())))
        ids = rows[0].reshape(-1, args.k)
        check = kl_sums.torch_row_sums(logits[:CHECK_ROWS], ids[:CHECK_ROWS])
        exact_tail = check[:, 2] + check[:, 3]
        for config in configs:
            try:
                sums = _kl_triton.row_sums(logits, ids, *config)
                ms, least = median_ms(lambda: _kl_triton.row_sums(logits, ids, *config), device, args.repeats)
            except Exception as exc:  # noqa: BLE001 — a shape Triton cannot build (registers, shared memory)
                results.append({"run": f"sums {name(config)}", "skipped": f"{type(exc).__name__}: {str(exc)[:120]}"})
                continue
            tail = sums[:CHECK_ROWS, 2] + sums[:CHECK_ROWS, 3]
            results.append({"run": f"sums {name(config)}", "median_ms": ms, "min_ms": least,
                            "tail_lse_max_diff": float((tail - exact_tail).abs().max()),
                            "peak_lse_max_diff": float((sums[:CHECK_ROWS, 1] - check[:CHECK_ROWS, 1]).abs().max())})
        print("\n".join(f"{row}" for row in results), flush=True)
    lines = ["| run | median ms | min ms | KL/token | max Δ log Σ (row, tail) |", "|---|---|---|---|---|"]
    for row in results:
        if "skipped" in row:
            lines.append(f"| {row['run']} | skipped: {row['skipped']} | | | |")
            continue
        kl = f"{row['kl_per_token']:.6f}" if "kl_per_token" in row else ""
        diff = (f"{row['peak_lse_max_diff']:.1e}, {row['tail_lse_max_diff']:.1e}"
                if "tail_lse_max_diff" in row else "")
        lines.append(f"| {row['run']}{' (' + row['shipped'] + ')' if 'shipped' in row else ''} | {row['median_ms']:.3f} | "
                     f"{row['min_ms']:.3f} | {kl} | {diff} |")
    write_report(out, "kl_kernel", results,
                 f"{args.rows} rows × {args.vocab} logits ({logits.dtype}, {device}), top-{args.k} + {args.samples} "
                 f"tail samples; {args.repeats} calls each", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
