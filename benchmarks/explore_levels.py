"""Hand-made configurations at a byte budget (issue 18), without a whole-model gptq run per configuration.

A level library (tensor, setting) -> (dequantized weight in bf16, exact coded bytes, gptq's output error
tr(ΔW H ΔWᵀ)) is built once, then assemblies are scored by summed bytes (+ the artifact's other bytes,
from uniform rtn 3-bit's exact size) and WikiText-2 PPL with the levels swapped into one model:

    python benchmarks/explore_levels.py build --bits 3 4          # gptq g128 levels of every decoder linear
    python benchmarks/explore_levels.py embedding                 # embedding rtn / mse (1 or head E[x²]) 4-5 bit
    python benchmarks/explore_levels.py score --max-tokens 8192   # the assemblies below, into results_N.json

Sizes are exact per tensor (the manifest differs by a few hundred bytes with the quantizer names); PPL uses
bf16 copies of the dequantized levels, so it can differ from the written artifact's in the last digits.
On the 2-core CPU: ~27 min for the gptq levels (busy machine), ~2-3 min per PPL at 8,192 tokens."""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path

import torch

from evo.compress.apply import compress_tensor
from evo.compress.coding import encode_tensor
from evo.compress.gptq_batch import GptqJob, gptq_quantize_many
from evo.compress.quantize import dequantize
from evo.compress.settings import TensorSetting
from evo.compress.size import SizeEntry
from evo.data.corpus import default_stats_tokens, read_text
from evo.evaluate.hessian import load_or_collect
from evo.evaluate.perplexity import perplexity, tokenize_for_eval
from evo.modelio import load_model


def say(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Library:
    def __init__(self, path: Path):
        self.path = path
        self.sizes: dict[tuple[str, str], int] = {}
        self.weights: dict[tuple[str, str], torch.Tensor] = {}
        self.err: dict[tuple[str, str], float] = {}
        if path.exists():
            data = torch.load(path, weights_only=False)
            self.sizes, self.weights, self.err = data["sizes"], data["weights"], data["err"]

    def save(self):
        torch.save({"sizes": self.sizes, "weights": self.weights, "err": self.err}, self.path)


def out_error(w, wq, h):
    d = (w.float() - wq.float())
    return float(torch.einsum("oi,ij,oj->", d, h.float(), d))


def build_gptq(loaded, hessians, lib: Library, settings: list[TensorSetting]):
    info = loaded.info
    params = dict(loaded.model.named_parameters())
    for layer in info.layers:
        groups: dict[str, list[str]] = {}
        for lin in layer.linears:
            groups.setdefault(hessians.inputs[lin.name]["input"], []).append(lin.name)
        for owner, names in groups.items():
            todo = [(n, s) for n in names for s in settings if (n, s.key()) not in lib.sizes]
            if not todo:
                continue
            h = hessians.hessian(names[0])
            jobs = [GptqJob(params[n].detach().float(), s) for n, s in todo]
            qs = gptq_quantize_many(jobs, h)
            for (n, s), q in zip(todo, qs):
                wq = dequantize(q)
                lib.sizes[(n, s.key())] = SizeEntry.from_encoded(encode_tensor(q)).compressed_bytes
                lib.weights[(n, s.key())] = wq.to(torch.bfloat16)
                lib.err[(n, s.key())] = out_error(params[n].detach(), wq, h)
        say(f"layer {layer.index} done")


def build_plain(loaded, lib: Library, name: str, settings: list[TensorSetting], stats=None):
    params = dict(loaded.model.named_parameters())
    for s in settings:
        if (name, s.key()) in lib.sizes:
            continue
        c = compress_tensor(params[name].detach().float(), s, stats)
        lib.sizes[(name, s.key())] = SizeEntry.from_encoded(encode_tensor(c.quantized)).compressed_bytes
        lib.weights[(name, s.key())] = c.dequantized().to(torch.bfloat16)
        say(f"{name} {s.key()} {lib.sizes[(name, s.key())]:,} B")


def build_main(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model("smollm2-135m")
    tokens = default_stats_tokens(loaded.tokenizer)
    hessians = load_or_collect(out / "hessians", loaded.model, loaded.info, tokens)
    lib = Library(out / "library.pt")
    settings = [TensorSetting(bits=b, group_size=g, quantizer="gptq") for b in args.bits for g in args.group_sizes]
    tic = time.perf_counter()
    build_gptq(loaded, hessians, lib, settings)
    say(f"gptq levels in {time.perf_counter() - tic:.0f} s")
    lib.save()


# --- scoring assemblies -------------------------------------------------------------------------------

def overhead_bytes(loaded, out: Path) -> int:
    """Artifact bytes that are not the decoder linears' or the embedding's frames (norms, tokenizer,
    config, manifest), from uniform rtn 3-bit's exact size."""
    from evo.baselines import uniform_config
    from evo.compress.size import SizeCache, SizeModel

    model = SizeModel.for_model(loaded, SizeCache(out / "size_cache"))
    config = uniform_config(3)
    total = model.artifact_bytes(config)
    names = [lin.name for lin in loaded.info.linears()] + [t.name for t in loaded.info.non_decoder
                                                           if t.role == "embedding"]
    coded = sum(model._entry(n, config.setting_for(n, loaded.info)).compressed_bytes for n in names)
    return total - coded


class Scorer:
    def __init__(self, loaded, lib: Library, ids, max_tokens: int, overhead: int):
        self.loaded, self.lib, self.ids, self.max_tokens, self.overhead = loaded, lib, ids, max_tokens, overhead
        self.params = dict(loaded.model.named_parameters())
        self.originals = {n: p.detach().clone() for n, p in self.params.items()}

    def bytes(self, choice: dict[str, str]) -> int:
        return self.overhead + sum(self.lib.sizes[(n, k)] for n, k in choice.items())

    @torch.no_grad()
    def ppl(self, choice: dict[str, str], max_tokens: int | None = None) -> float:
        for n, p in self.params.items():
            p.copy_(self.originals[n])
        for n, k in choice.items():
            self.params[n].copy_(self.lib.weights[(n, k)].to(self.params[n].dtype))
        return perplexity(self.loaded.model, self.ids, seq_len=512, max_tokens=max_tokens or self.max_tokens).ppl


def head_importance(loaded) -> torch.Tensor:
    """E[x_j²] of the output head's input on the embedded corpus's first sequences."""
    from evo.evaluate.forward import Hook, run_forward, token_batch

    head = loaded.model.get_output_embeddings()
    acc = torch.zeros(head.weight.shape[1], dtype=torch.float64)
    count = [0]

    def hook(module, args):
        x = args[0].reshape(-1, args[0].shape[-1]).double()
        acc.add_(x.square().sum(0))
        count[0] += x.shape[0]

    run_forward(loaded.model, token_batch(default_stats_tokens(loaded.tokenizer)), 4, hooks=[Hook(head, hook, pre=True)])
    return (acc / count[0]).float()


def embedding_main(args):
    """Embedding levels: rtn, mse with weights 1 ("mse"), mse with the head input's E[x²] ("mseh")."""
    from evo.compress.mse import mse_grid
    from evo.compress.quantize import quantize

    out = Path(args.out)
    loaded = load_model("smollm2-135m")
    name = [t.name for t in loaded.info.non_decoder if t.role == "embedding"][0]
    imp = head_importance(loaded)
    lib = Library(out / "lib_emb.pt")
    weight = dict(loaded.model.named_parameters())[name].detach().float()
    for g in args.group_sizes:
        for b in args.bits:
            for q in ("rtn", "mse", "mseh"):
                s = TensorSetting(bits=b, group_size=g, quantizer="rtn" if q == "rtn" else "mse")
                key = f"{q}-b{b}-g{g}"
                qt = quantize(weight, s) if q == "rtn" else quantize(
                    weight, s, None, mse_grid(weight, s, None, imp if q == "mseh" else None))
                lib.sizes[(name, key)] = SizeEntry.from_encoded(encode_tensor(qt)).compressed_bytes
                wq = dequantize(qt)
                lib.weights[(name, key)] = wq.to(torch.bfloat16)
                d = (weight - wq).square()
                lib.err[(name, key)] = (float(d.sum()), float((d * imp).sum()))
                say(f"{key} {lib.sizes[(name, key)]:,} B, error plain {lib.err[(name, key)][0]:.1f} "
                    f"head-weighted {lib.err[(name, key)][1]:.1f}")
            lib.save()


def score_main(args):
    from evo.baselines import uniform_config
    from evo.compress.size import SizeCache, SizeModel

    out = Path(args.out)
    loaded = load_model("smollm2-135m")
    info = loaded.info
    emb = [t.name for t in info.non_decoder if t.role == "embedding"][0]
    lib = Library(out / "library.pt")
    elib = Library(out / "lib_emb.pt")
    lib.sizes.update(elib.sizes)
    lib.weights.update(elib.weights)
    sm = SizeModel.for_model(loaded, SizeCache(out / "size_cache"))
    cfg3 = uniform_config(3)
    budget = sm.artifact_bytes(cfg3)
    names = [lin.name for lin in info.linears()]
    coded = sum(sm._entry(n, cfg3.setting_for(n, info)).compressed_bytes for n in names + [emb])
    overhead = budget - coded
    s8 = cfg3.setting_for(emb, info)
    lib.sizes[(emb, "rtn-b8-g128")] = sm._entry(emb, s8).compressed_bytes
    lib.weights[(emb, "rtn-b8-g128")] = compress_tensor(
        dict(loaded.model.named_parameters())[emb].detach().float(), s8).dequantized().to(torch.bfloat16)
    say(f"budget (uniform rtn3) {budget:,}; other bytes {overhead:,}; emb rtn8 {lib.sizes[(emb, 'rtn-b8-g128')]:,}")
    ids = tokenize_for_eval(loaded.tokenizer, read_text("wikitext2"))
    sc = Scorer(loaded, lib, ids, args.max_tokens, overhead)
    k = {b: TensorSetting(bits=b, group_size=128, quantizer="gptq").key() for b in (3, 4)}
    results = []

    def run(label, choice):
        tic = time.perf_counter()
        r = {"label": label, "bytes": sc.bytes(choice), "ppl": sc.ppl(choice)}
        r["fits"] = r["bytes"] <= budget
        results.append(r)
        say(f"{label:<48} {r['bytes'] / 1e6:8.3f} MB  fits={r['fits']}  PPL {r['ppl']:.3f}  "
            f"({time.perf_counter() - tic:.0f}s)")
        (out / f"results_{args.max_tokens}.json").write_text(json.dumps(results, indent=1))

    run("dense", {})
    for e in ("rtn-b4-g128", "mseh-b4-g128", "rtn-b5-g128", "mseh-b5-g128"):
        if (emb, e) in lib.sizes:
            run(f"dense decoder, emb {e}", {emb: e})
    base4 = {n: k[4] for n in names}
    run("gptq4 + emb rtn8", {**base4, emb: "rtn-b8-g128"})
    for e in ("mseh-b4-g128", "rtn-b4-g128", "mseh-b5-g128"):
        if (emb, e) not in lib.sizes:
            continue
        choice = {**base4, emb: e}
        run(f"gptq4 + emb {e}", choice)
        # greedy: 4 -> 3 bits for the tensors of least output-error increase per byte saved, until it fits
        order = sorted(names, key=lambda n: (lib.err[(n, k[3])] - lib.err[(n, k[4])])
                       / max(1, lib.sizes[(n, k[4])] - lib.sizes[(n, k[3])]))
        c, demoted = dict(choice), []
        for n in order:
            if sc.bytes(c) <= budget:
                break
            c[n] = k[3]
            demoted.append(n)
        roles: dict[str, int] = {}
        for n in demoted:
            roles[n.split(".")[-2]] = roles.get(n.split(".")[-2], 0) + 1
        run(f"  greedy-err {len(demoted)} at 3b {roles}", c)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("build", "embedding", "score"))
    p.add_argument("--out", default="runs/explore")
    p.add_argument("--bits", type=int, nargs="+", default=None, help="build: [3, 4]; embedding: [4, 5]")
    p.add_argument("--group-sizes", type=int, nargs="+", default=[128])
    p.add_argument("--max-tokens", type=int, default=8192)
    args = p.parse_args()
    if args.what == "build":
        args.bits = args.bits or [3, 4]
        build_main(args)
    elif args.what == "embedding":
        args.bits = args.bits or [4, 5]
        embedding_main(args)
    else:
        score_main(args)


if __name__ == "__main__":
    main()
