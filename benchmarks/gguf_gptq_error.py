"""GGUF encoders with and without GPTQ's error feedback (evo/gguf/gptq.py) on real tensors: the relative
layer-output error tr(E H Eᵀ) / tr(W H Wᵀ) per llama.cpp type, on the calibration Hessian and on a held-out one.

    python benchmarks/gguf_gptq_error.py --out runs/gguf_gptq_error                 # CPU, SmolLM2-135M layer 3
    python benchmarks/gguf_gptq_error.py --device cuda --layers 3 15 28 --out $OUT/gptq_err --deadline-s 500

Inputs: sequences of 256 tokens of the embedded corpus, its sources round-robin (evo.data.corpus.
default_stats_tokens's order): the first --samples give the calibration Hessian H = E[x xᵀ] of each chosen
linear's input (what the gguf_gptq space collects into RUN/hessians from the run's calibration set) and its
imatrix (diag H, the plain encoder's weights); the next --heldout a held-out Hessian that scores both encodings
(GPTQ fits the calibration H: the held-out columns show whether that transfers). --damp: GPTQ's damping.
Types: those of --types whose blocks divide the tensor's rows (SmolLM2's 576-wide rows: the 32-weight types).
Prints the table side by side (plain, gptq, ratio) and writes results.json and results.md under --out; with
--deadline-s no new tensor x type starts after it (the partial table is written).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from evo.compress.gptq import GPTQ_DAMP  # noqa: E402
from evo.data.corpus import read_corpus, tokenize_corpus  # noqa: E402
from evo.evaluate.forward import Hook, run_forward  # noqa: E402
from evo.gguf import quants  # noqa: E402
from evo.gguf.gptq import gptq_encode  # noqa: E402
from evo.modelio import load_model  # noqa: E402

TYPES = ("Q2_K", "Q3_K", "Q4_0", "IQ4_NL", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layers", type=int, nargs="+", default=[3])
    p.add_argument("--tensors", nargs="+", default=["q_proj", "down_proj"], help="linear names (suffixes)")
    p.add_argument("--types", default=",".join(TYPES))
    p.add_argument("--samples", type=int, default=8, help="calibration sequences of 256 tokens")
    p.add_argument("--heldout", type=int, default=16, help="held-out sequences of 256 tokens")
    p.add_argument("--damp", type=float, default=GPTQ_DAMP, help="GPTQ damping (fraction of mean diag H)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "gguf_gptq_error")
    p.add_argument("--deadline-s", type=float, default=None)
    args = p.parse_args(argv)
    args.types = [quants.quant_type(t).name for t in args.types.split(",") if t.strip()]
    return args


class _Gram:
    """A forward pre-hook summing x xᵀ of a linear's input (float64) and counting tokens."""

    def __init__(self) -> None:
        self.total, self.tokens = None, 0

    def __call__(self, module, args) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        product = x.T @ x
        self.total = product if self.total is None else self.total + product
        self.tokens += x.shape[0]

    def hessian(self) -> torch.Tensor:
        return (self.total / self.tokens).float()


def input_hessians(loaded, names: list[str], token_ids) -> dict[str, torch.Tensor]:
    grams = {name: _Gram() for name in names}
    modules = {lin.name: lin.module for layer in loaded.info.layers for lin in layer.linears}
    hooks = [Hook(loaded.model.get_submodule(modules[name]), grams[name], pre=True) for name in names]
    run_forward(loaded.model, token_ids, 4, hooks=hooks)
    return {name: gram.hessian() for name, gram in grams.items()}


def corpus_sequences(tokenizer, seq_len: int = 256):
    """The embedded corpus cut in sequences, its sources round-robin (default_stats_tokens's order)."""
    pool = tokenize_corpus(read_corpus(), tokenizer, seq_len)
    by_source: dict[str, list[int]] = {}
    for index, source in enumerate(pool.sources):
        by_source.setdefault(source, []).append(index)
    order = [rows[i] for i in range(max(map(len, by_source.values()))) for rows in by_source.values() if i < len(rows)]
    return pool.token_ids[order]


def relative_error(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> float:
    w, e, h = weight.double(), (weight - approx).double(), hessian.double()
    return float(torch.einsum("ij,jk,ik->", e, h, e) / torch.einsum("ij,jk,ik->", w, h, w))


def _ratio(a: float, b: float) -> str:
    """a / b to 3 decimals; "exact" when both are 0 (a weight already on the type's grid, e.g. the default
    model's tensors that its source GGUF stores in that type)."""
    if b == 0:
        return "exact" if a == 0 else "inf"
    return f"{a / b:.3f}"


def render(rows: list[dict], meta: dict) -> str:
    lines = ["# GGUF encoders: plain (imatrix) vs GPTQ error feedback, relative output error", "",
             f"`{' '.join(meta['argv'])}`; {meta['model']} on {meta['device']}, Hessians from {meta['calib_tokens']} "
             f"calibration tokens (damping {meta['damp']}), held-out {meta['heldout_tokens']} tokens; error = tr(E H Eᵀ) / tr(W H Wᵀ).", "",
             "| tensor | type | bits/weight | plain (calib) | gptq (calib) | gptq/plain | plain (held-out) | "
             "gptq (held-out) | gptq/plain | plain s | gptq s |", "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['tensor']} | {r['type']} | {r['bits_per_weight']:.3f} | {r['plain_calib']:.5f} | "
                     f"{r['gptq_calib']:.5f} | {_ratio(r['gptq_calib'], r['plain_calib'])} | {r['plain_heldout']:.5f} | "
                     f"{r['gptq_heldout']:.5f} | {_ratio(r['gptq_heldout'], r['plain_heldout'])} | "
                     f"{r['plain_s']:.2f} | {r['gptq_s']:.2f} |")
    if meta.get("stopped"):
        lines += ["", f"stopped at the deadline: {meta['stopped']}"]
    return "\n".join(lines) + "\n"


def _seconds(fn, device: torch.device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    tic = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - tic


def run(args, started: float) -> int:
    deadline = started + args.deadline_s if args.deadline_s else None
    loaded = load_model(args.model, device=args.device, dtype="float32")
    device = torch.device(args.device)
    tokens = corpus_sequences(loaded.tokenizer)
    if args.samples < 1 or args.heldout < 1 or tokens.shape[0] < args.samples + args.heldout:
        print(f"error: --samples and --heldout must be >= 1 and add up to at most {tokens.shape[0]} (the embedded "
              "corpus's sequences)", file=sys.stderr)
        return 2
    calib, heldout = tokens[:args.samples], tokens[args.samples:args.samples + args.heldout]
    names = []
    for index in args.layers:
        if not 0 <= index < loaded.info.num_layers:
            print(f"error: --layers {index}: the model has layers 0..{loaded.info.num_layers - 1}", file=sys.stderr)
            return 2
        for suffix in args.tensors:
            found = [lin.name for lin in loaded.info.layers[index].linears if lin.name.endswith(f"{suffix}.weight")]
            if not found:
                print(f"error: layer {index} has no linear named *{suffix}", file=sys.stderr)
                return 2
            names += found
    h_calib = input_hessians(loaded, names, calib)
    h_held = input_hessians(loaded, names, heldout)
    params = dict(loaded.model.named_parameters())
    meta = {"argv": sys.argv, "model": args.model, "device": args.device, "calib_tokens": int(calib.size),
            "heldout_tokens": int(heldout.size), "damp": args.damp, "torch": torch.__version__, "stopped": None}
    rows = []
    print(f"{'tensor':42s} {'type':6s} {'plain':>9s} {'gptq':>9s} {'ratio':>6s} | held-out {'plain':>9s} {'gptq':>9s} "
          f"{'ratio':>6s}", flush=True)
    for name in names:
        weight = params[name].detach().float()
        hessian = h_calib[name].to(device)
        imatrix = torch.diagonal(hessian).clone()
        for qtype in args.types:
            if not quants.allows(tuple(weight.shape), qtype):
                continue
            if deadline is not None and time.time() > deadline:
                meta["stopped"] = f"before {name} {qtype}"
                break
            plain, plain_s = _seconds(lambda: quants.encode_rows(weight, qtype, imatrix, (weight * weight).mean(-1, keepdim=True)), device)
            fed, gptq_s = _seconds(lambda: gptq_encode(weight, qtype, hessian, imatrix, damp=args.damp, name=name), device)
            shape = tuple(weight.shape)
            p, g = (quants.dequantize(d, qtype, shape, device=device) for d in (plain, fed))
            row = {"tensor": name, "type": qtype, "bits_per_weight": quants.quant_type(qtype).bits_per_weight,
                   "plain_calib": relative_error(weight, p, hessian), "gptq_calib": relative_error(weight, g, hessian),
                   "plain_heldout": relative_error(weight, p, h_held[name].to(device)),
                   "gptq_heldout": relative_error(weight, g, h_held[name].to(device)),
                   "plain_s": plain_s, "gptq_s": gptq_s}
            rows.append(row)
            print(f"{name:42s} {qtype:6s} {row['plain_calib']:9.5f} {row['gptq_calib']:9.5f} "
                  f"{_ratio(row['gptq_calib'], row['plain_calib']):>6s} |          {row['plain_heldout']:9.5f} "
                  f"{row['gptq_heldout']:9.5f} {_ratio(row['gptq_heldout'], row['plain_heldout']):>6s}", flush=True)
        if meta["stopped"]:
            break
    meta["seconds"] = round(time.time() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    markdown = render(rows, meta)
    (args.out / "results.md").write_text(markdown)
    print(markdown)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'} in {meta['seconds']:.0f} s")
    return 0


def main(argv=None) -> int:
    from evo.errors import EvoError

    try:
        return run(parse_args(argv), time.time())
    except EvoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
