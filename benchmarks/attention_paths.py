"""What transformers' attention masks, in-graph rotary and the KL's torch passes cost the evaluator's
compiled forward + KL (issue 19).

Under torch.compile, torch before 2.14 makes transformers build a [batch, 1, L, L] mask for every
forward, so SDPA leaves its flash kernel and grouped keys/values are copied per head. FastForward
runs compiled calls mask-free where the model allows it (evo/evaluate/causal_attention.py). This
benchmark times one evaluation's forward + KL (FastForward.kl_sum_of, the evaluator's call) both
ways, side by side in one process, on a model built from a config with random weights (the timings
depend on shapes, not values: no checkpoint needed), and checks that both ways give the same KL.

Each run is MODE:PATH:NxL (mode: a compile mode of evo.evaluate.fastforward.COMPILE_MODES, e.g. default,
reduce-overhead, max-autotune), in the order given; a run whose compile would not fit in what
--deadline-s leaves is skipped, saying so. PATH is what FastForward runs:
  free      what the search runs: mask-free attention, rotary tables, the one-pass KL kernel (CUDA)
  masks     transformers' masks (mask_free=False)
  rotary    cos/sin computed in the graph (rotary_tables=False)
  torch_kl  the KL's row sums by torch ops (topk_kl_sum(row_sums="torch"))
  before    both of the last two and trees below: the path of session 26
  trees     torch.compile's CUDA graphs of the forward alone, the KL launched after (stage_graphs=False): the
            path of session 27 (under "reduce-overhead"; free replays one graph of forward + KL per stage)
Each run other than free is compared with the free run of its mode and shape (free ms / its ms).

  # on one H200 (≈ 3 min, SmolLM2-135M's shapes):
  python benchmarks/attention_paths.py --device cuda --deadline-s 170 --out $OUT/attention_paths
  # CPU smoke (eager only: the compiled runs say "skipped: CUDA only"):
  python benchmarks/attention_paths.py --device cpu --layers 2 --runs off:masks:2x64,off:free:2x64 \\
      --repeats 2 --out runs/attention-paths-cpu
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's evo, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evo.evaluate.fastforward import COMPILE_MODES, FastForward  # noqa: E402
from evo.evaluate.metrics import topk_kl_sum  # noqa: E402
from kernel_profile import add_cublas_workspace_option, kernel_lines, profile_table  # noqa: E402

DEFAULT_RUNS = ("reduce-overhead:free:64x512,reduce-overhead:trees:64x512,reduce-overhead:before:64x512,"
                "reduce-overhead:free:4x512,reduce-overhead:trees:4x512")
TOP_K, TAIL = 256, 16
TORCH_KL = functools.partial(topk_kl_sum, row_sums="torch")
PATHS = {  # FastForward's options of each path (the last is the shipped one: the parse errors' example)
    "masks": {"mask_free": False},
    "rotary": {"rotary_tables": False},
    "torch_kl": {"kl": TORCH_KL},
    "before": {"rotary_tables": False, "kl": TORCH_KL, "stage_graphs": False},
    "trees": {"stage_graphs": False},
    "tuned": {"tune_kernels": True},
    "free": {},
}


def smollm2_config(layers: int):
    """SmolLM2-135M's architecture (the default model's GGUF metadata), `layers` decoder layers."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                       rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)


def run_parts(text: str, form: str, paths: tuple[str, ...]) -> dict:
    """A run written as `form` (MODE, PATH and NxL joined by ':' in its order) as {"MODE", "PATH",
    "sequences", "tokens"}; anything else ends the benchmark with one line saying how to write it."""
    names = form.split(":")[:2]
    try:
        *given, shape = text.split(":")
        sequences, tokens = (int(part) for part in shape.lower().split("x"))
        parts = dict(zip(names, given, strict=True))
    except ValueError:
        example = {"MODE": "reduce-overhead", "PATH": paths[-1]}
        raise SystemExit(f"run {text!r}: write it as {form}, e.g. {':'.join(example[n] for n in names)}:64x512") from None
    if sequences < 1 or tokens < 1:
        raise SystemExit(f"run {text!r}: NxL needs at least 1 sequence of 1 token")
    if parts["PATH"] not in paths:
        raise SystemExit(f"run {text!r}: the path is one of {', '.join(paths)}")
    if parts["MODE"] not in COMPILE_MODES:
        raise SystemExit(f"run {text!r}: compile mode {parts['MODE']!r} is unknown: use one of {', '.join(COMPILE_MODES)}")
    return {**parts, "sequences": sequences, "tokens": tokens}


def parse_run(text: str) -> tuple[str, tuple[str, str], str, int, int]:
    """MODE:PATH:NxL → (name, key (mode, path), mode, sequences, tokens)."""
    run = run_parts(text, "MODE:PATH:NxL", tuple(PATHS))
    return text, (run["MODE"], run["PATH"]), run["MODE"], run["sequences"], run["tokens"]


@torch.no_grad()
def reference_rows(model, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The dense model's top-k log-probabilities, tail mass and tail samples (the evaluator's rows)."""
    rows = []
    for start in range(0, ids.shape[0], 4):
        logp = torch.log_softmax(model(input_ids=ids[start:start + 4]).logits.float(), dim=-1)
        top = logp.topk(TOP_K, dim=-1)
        tail = torch.log1p(-top.values.exp().sum(-1).clamp(max=1 - 1e-6))
        probs = logp.exp().scatter(-1, top.indices, 0.0)
        flat = probs.reshape(-1, probs.shape[-1]) + 1e-12
        draws = torch.multinomial(flat, TAIL, replacement=True).reshape(*probs.shape[:2], TAIL)
        rows.append((top.indices, top.values, tail, draws, logp.gather(-1, draws)))
    return tuple(torch.cat(parts) for parts in zip(*rows))


def perturb(model, scale: float, seed: int) -> None:
    """Noise on every linear weight (a stand-in for quantization): the KL to the reference is > 0."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 2 and "embed" not in name:
                noise = torch.randn(parameter.shape, generator=generator).to(parameter.device, parameter.dtype)
                parameter.add_(noise * parameter.float().std().to(parameter.dtype) * scale)


def time_run(forward: FastForward, ids: torch.Tensor, rows, repeats: int, device: torch.device) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    kl = float(forward.kl_sum_of(ids, *rows))  # compiles (and captures) on the first call
    warmup = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        value = float(forward.kl_sum_of(ids, *rows))
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return {"warmup_s": warmup, "median_ms": statistics.median(times), "min_ms": min(times),
            "kl_per_token": value / ids.numel(), "kl_first": kl / ids.numel(), "compiled": forward.compiled,
            "fallback": forward.fallback, "attention": describe(forward)}


def describe(forward) -> str:
    """What a forward runs: its attention, where its rotary comes from, how its KL sums the rows."""
    parts = [forward.attention]
    if hasattr(forward, "rotary"):
        parts.append(f"rotary {forward.rotary}")
    if hasattr(forward, "graphs"):
        parts.append(f"CUDA graphs: {forward.graphs}")
    kl = getattr(forward, "kl_function", None)
    if kl is not None:
        torch_sums = getattr(kl, "keywords", {}).get("row_sums") == "torch"
        parts.append("KL sums by torch ops" if torch_sums else "KL sums by the one-pass kernel where it runs")
    return "; ".join(parts)


def model_and_rows(layers: int, device: torch.device, seed: int, runs: list[tuple], noise: float = 0.05):
    """(model, dtype, ids, reference rows) for the runs' largest shape: the model built from
    SmolLM2-135M's config with `layers` layers, the rows from its logits, then its weights perturbed
    (the KL of every run is > 0; noise: the perturbation's scale, relative to each weight's std). runs:
    (name, key, mode, sequences, tokens) tuples."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = LlamaForCausalLM(smollm2_config(layers)).to(device, dtype).eval()
    longest = max(run[3] for run in runs), max(run[4] for run in runs)
    ids = torch.randint(0, model.config.vocab_size, longest, device=device)
    rows = reference_rows(model, ids)
    perturb(model, noise, seed)
    return model, dtype, ids, rows


def measure(runs: list[tuple], forward_of, ids, rows, args, device: torch.device, began: float, save) -> list[dict]:
    """Each run (name, key, mode, sequences, tokens) in order, through forward_of(key) (made once per
    key: its compiled graphs are reused); a compiled run on a CPU, or one whose compile would not fit
    in what --deadline-s leaves, is skipped, saying so. save(results) after each run."""
    results, forwards = [], {}
    for name, key, mode, sequences, tokens in runs:
        left = args.deadline_s - (time.perf_counter() - began)
        if mode != "off" and device.type != "cuda":
            results.append({"run": name, "skipped": "CUDA only"})
            continue
        if left < (args.compile_need_s if mode != "off" else 5.0):
            results.append({"run": name, "skipped": f"{left:.0f} s left"})
            continue
        if key not in forwards:
            forwards[key] = forward_of(key)
        part = tuple(row[:sequences, :tokens].contiguous() for row in rows)
        run_ids = ids[:sequences, :tokens].contiguous()
        row = {"run": name, **time_run(forwards[key], run_ids, part, args.repeats, device)}
        if args.profile:  # one more call, traced: its kernels by kind
            row["profile"] = profile_table(lambda: float(forwards[key].kl_sum_of(run_ids, *part)), device)
        results.append(row)
        print(json.dumps(row), flush=True)
        save(results)
    return results


def table(results: list[dict], column: str, ratio: str, twin_of) -> list[str]:
    """The markdown table of the runs: twin_of(name) names the run this one's time is compared with."""
    lines = [f"| run | {column} | warm-up s | median ms | min ms | KL/token | {ratio} |", "|---|---|---|---|---|---|---|"]
    done = {row["run"]: row for row in results if "median_ms" in row}
    for row in results:
        if "skipped" in row:
            lines.append(f"| {row['run']} | skipped: {row['skipped']} | | | | | |")
            continue
        twin = done.get(twin_of(row["run"]) or "")
        share = f"{twin['median_ms'] / row['median_ms']:.2f}" if twin else ""
        lines.append(f"| {row['run']} | {row['attention']} | {row['warmup_s']:.1f} | {row['median_ms']:.2f} | "
                     f"{row['min_ms']:.2f} | {row['kl_per_token']:.6f} | {share} |")
    return lines


def profile_lines(results: list[dict]) -> list[str]:
    """The kernel profile of each profiled run (--profile), as markdown."""
    lines = []
    for row in results:
        if "profile" in row:
            lines += [""] + kernel_lines(row["run"], row["profile"])
    return lines


def write_report(out: Path, stem: str, results: list[dict], summary: str | None = None, table_lines=(),
                 **extra) -> None:
    """OUT/STEM.json (argv, extra, results so far); with a summary also OUT/STEM.md (the command, the
    summary, the table), printed."""
    (out / f"{stem}.json").write_text(json.dumps({"argv": sys.argv, **extra, "results": results}, indent=1))
    if summary is None:
        return
    lines = [f"# {stem}\n\n`{' '.join(sys.argv)}`\n\n{summary}\n", *table_lines]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def device_option(text: str) -> str:
    """--device: a torch device this machine has (argparse prints the error in one line, exit 2)."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device: use cuda or cpu") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("CUDA is not available here: use --device cpu")
    return text


def shape_arguments(description: str, *, runs: str, run_form: str, deadline_s: float, compile_need_s: float,
                    out: str) -> argparse.ArgumentParser:
    """The options of a shape-only benchmark (this one and forward_floor.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", type=device_option, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--runs", default=runs, help=f"comma-separated {run_form}, in order")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--deadline-s", type=float, default=deadline_s)
    parser.add_argument("--compile-need-s", type=float, default=compile_need_s,
                        help="seconds a new compiled run needs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=0.05,
                        help="the weights' perturbation after the reference (× each weight's std): the KL's size")
    parser.add_argument("--profile", action="store_true",
                        help="after timing each run, trace one more call: its kernels' time by kind, the top kernels")
    parser.add_argument("--inductor", type=inductor_settings, default={},
                        help="KEY=VALUE,...: torch._inductor.config settings for every compile of this process "
                             "(e.g. coordinate_descent_tuning=True)")
    add_cublas_workspace_option(parser)
    parser.add_argument("--sdpa", type=sdpa_backend, default="any",
                        help="the only SDPA backend enabled in this process: flash, efficient, cudnn or math "
                             "(any: torch's own choice)")
    parser.add_argument("--out", default=out)
    return parser


SDPA_SWITCHES = {"flash": "enable_flash_sdp", "efficient": "enable_mem_efficient_sdp", "cudnn": "enable_cudnn_sdp",
                 "math": "enable_math_sdp"}


def sdpa_backend(text: str) -> str:
    """--sdpa: any, or one of SDPA_SWITCHES, which becomes the only backend enabled (applied at once)."""
    if text != "any" and text not in SDPA_SWITCHES:
        raise argparse.ArgumentTypeError(f"{text!r}: give any or one of {', '.join(SDPA_SWITCHES)}")
    if text != "any":
        for name, switch in SDPA_SWITCHES.items():
            getattr(torch.backends.cuda, switch)(name == text)
    return text


def inductor_settings(text: str) -> dict:
    """KEY=VALUE,... → {key: value} of torch._inductor.config (values as Python literals, else strings),
    applied at once; an unknown key or a part without = is one line (argparse, exit 2)."""
    import ast

    import torch._inductor.config as inductor

    settings = {}
    for part in filter(None, text.split(",")):
        key, equals, value = part.partition("=")
        if not equals or not hasattr(inductor, key.strip()):
            raise argparse.ArgumentTypeError(f"{part!r}: give KEY=VALUE with KEY a torch._inductor.config setting")
        try:
            settings[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            settings[key.strip()] = value.strip()
    for key, value in settings.items():
        setattr(inductor, key, value)
    return settings


def main(argv: list[str] | None = None) -> int:
    args = shape_arguments(__doc__.splitlines()[0], runs=DEFAULT_RUNS, run_form="MODE:PATH:NxL", deadline_s=170.0,
                           compile_need_s=35.0, out="runs/attention-paths").parse_args(argv)
    began = time.perf_counter()
    device = torch.device(args.device)
    runs = [parse_run(text) for text in args.runs.split(",") if text]
    model, dtype, ids, rows = model_and_rows(args.layers, device, args.seed, runs, args.noise)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def twin_of(name: str) -> str | None:  # a run with something switched off against the shipped path's
        mode, path, shape = name.split(":")
        return f"{mode}:free:{shape}" if path != "free" else None

    results = measure(runs, lambda key: FastForward(model, key[0], device, **PATHS[key[1]]),
                      ids, rows, args, device, began, lambda done: write_report(out, "attention_paths", done))
    write_report(out, "attention_paths", results,
                 f"{args.layers} layers of SmolLM2-135M's shapes, random weights, {dtype}, {device}; forward + "
                 f"top-{TOP_K} + {TAIL}-sample KL of one evaluation (FastForward.kl_sum_of)"
                 + (f"; torch._inductor.config {args.inductor}" if args.inductor else "")
                 + (f"; SDPA backend {args.sdpa} only" if args.sdpa != "any" else "")
                 + f"; cuBLAS workspace: {args.cublas_workspace}",
                 table(results, "forward", "free ms / its ms", twin_of) + profile_lines(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
