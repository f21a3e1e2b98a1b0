"""Screen mixed per-tensor settings for Double Compression's runtime goal (issue 14) on the CPU: every
(tensor, setting) is compressed once and cached on disk (its dequantized weight and its exact coded
bytes), so a configuration that mixes settings by role and layer costs one perplexity pass.

    python benchmarks/dc_screen.py --configs NAME [NAME ...] [--max-tokens 4096] [--cache DIR]

Bytes: coded frames of every matrix (encode_tensor, the bytes the artifact and the "compressed" store
hold) + the other tensors as stored, against INT8-resident (1 byte per matrix weight + an fp16 scale
per row, same other tensors), as benchmarks/double_compression_runtime.py counts them. Screening only:
the winners are confirmed by that script (artifact written, loaded back, counted by the runtime).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from _common import setup_threads

from evo.compress.apply import compress_tensor
from evo.compress.coding import encode_tensor
from evo.compress.settings import TensorSetting
from evo.constants import MB
from evo.data.corpus import default_stats_tokens, read_text
from evo.evaluate.perplexity import perplexity, tokenize_for_eval
from evo.modelio import load_model



def ch8(rescale: float, quantizer: str = "gptq", sparsity: float = 0.0) -> TensorSetting:
    return TensorSetting(bits=8, group_size=None, symmetric=True, rescale=rescale, sparsity=sparsity,
                         prune_criterion="linf" if sparsity else "magnitude", quantizer=quantizer)


def emb(rescale: float | str) -> TensorSetting:
    """The tied embedding/head: 8-bit per channel, rtn; "4m" = rescale 4 with the mse clip search
    (unweighted: no statistics of the head's input exist)."""
    if isinstance(rescale, str) and rescale.endswith("m"):
        return ch8(float(rescale[:-1]), "mse")
    return ch8(float(rescale), "rtn")


ROLES = ("attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down")


def uniform(linear: TensorSetting, embedding: TensorSetting):
    return lambda role, layer: embedding if role == "embedding" else linear


def by_role(embedding: TensorSetting, default: TensorSetting, **roles: TensorSetting):
    def pick(role: str, layer: int) -> TensorSetting:
        if role == "embedding":
            return embedding
        return roles.get(role, default)
    return pick


def edges(embedding: TensorSetting, default: TensorSetting, edge: TensorSetting, n_edge: int, n_layers: int = 30,
          **roles: TensorSetting):
    """The first and last n_edge layers take `edge`, the others `default` (or their role's)."""
    def pick(role: str, layer: int) -> TensorSetting:
        if role == "embedding":
            return embedding
        if layer < n_edge or layer >= n_layers - n_edge:
            return edge
        return roles.get(role, default)
    return pick


CONFIGS = {
    "u-r4": uniform(ch8(4), emb(4)),
    "u-r5": uniform(ch8(5), emb(5)),
    "u-r6": uniform(ch8(6), emb(6)),
    "u-r5-e3": uniform(ch8(5), emb(3)),
    "u-r6-e3": uniform(ch8(6), emb(3)),
    "u-r6-e2": uniform(ch8(6), emb(2)),
    "u-r5-e2": uniform(ch8(5), emb(2)),
    "u-r8-e2": uniform(ch8(8), emb(2)),
    "u-r8-e3": uniform(ch8(8), emb(3)),
    # not the 8-bit setting: smaller grids per group
    "b6g128-e4": uniform(TensorSetting(bits=6, group_size=128, quantizer="gptq"), emb(4)),
    "b5g128-e4": uniform(TensorSetting(bits=5, group_size=128, quantizer="gptq"), emb(4)),
    "b5g128-e3": uniform(TensorSetting(bits=5, group_size=128, quantizer="gptq"), emb(3)),
    "b6g128rtn-e3": uniform(TensorSetting(bits=6, group_size=128), emb(3)),
    "b5g128rtn-e3": uniform(TensorSetting(bits=5, group_size=128), emb(3)),
    "b5g64rtn-e3": uniform(TensorSetting(bits=5, group_size=64), emb(3)),
    "u-r6-e1": uniform(ch8(6), emb(1)),
    "u-r1rtn-e3": uniform(ch8(1, "rtn"), emb(3)),
    # the source's own grid (Q4_1: 4-bit, 32 columns, fp16 scale and minimum)
    "q41-e4": uniform(TensorSetting(bits=4, group_size=32, zero_point="float"), emb(4)),
    "q41-e3": uniform(TensorSetting(bits=4, group_size=32, zero_point="float"), emb(3)),
}


def role_of(name: str, tied_name: str) -> tuple[str, int]:
    if name == tied_name:
        return "embedding", -1
    parts = name.split(".")
    layer = int(parts[parts.index("layers") + 1])
    proj = parts[-2]
    role = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_o", "gate_proj": "mlp_gate",
            "up_proj": "mlp_up", "down_proj": "mlp_down"}[proj]
    return role, layer


def level(cache: Path, name: str, setting: TensorSetting, weight: torch.Tensor, stats, hessians) -> tuple[Path, int]:
    """(file of the dequantized weight, coded bytes) of one tensor at one setting, computed once."""
    folder = cache / setting.key()
    path = folder / f"{name}.pt"
    meta = folder / f"{name}.bytes"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        act = stats.get(name) if stats is not None and setting.quantizer == "mse" else None
        hessian = hessians.hessian(name).to(weight.device) if setting.quantizer == "gptq" and name in hessians else None
        compressed = compress_tensor(weight, setting, act, hessian)
        encoded = encode_tensor(compressed.quantized)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(compressed.dequantized().to(torch.float32).cpu(), partial)
        meta.write_text(str(encoded.compressed_bytes))
        partial.replace(path)  # last: a file present is a level complete
    return path, int(meta.read_text())


def greedy(spec: str, matrices, tied_name, dense, stats, hessians, cache: Path, other: int):
    """greedy:MB:R1,R2,...:EMB: every decoder linear starts at the largest rescale Rk (8-bit per-channel
    gptq), the embedding at EMB (rtn); then, one step at a time, the linear whose Hessian-weighted
    error tr(ΔW H ΔWᵀ) drops most per byte added moves to its next smaller rescale, while the total
    stays within MB (1e6 bytes)."""
    _, budget, rescales, rescale = spec.split(":")
    levels = [ch8(float(r)) for r in sorted(rescales.split(","), key=float, reverse=True)]
    embedding = emb(rescale)
    total = other + level(cache, tied_name, embedding, dense[tied_name], stats, hessians)[1]
    errors, sizes = {}, {}
    for name in matrices:
        if name == tied_name:
            continue
        h = hessians.hessian(name).to(device=dense[name].device, dtype=torch.float32)
        for k, setting in enumerate(levels):
            path, size = level(cache, name, setting, dense[name], stats, hessians)
            delta = dense[name] - torch.load(path, map_location=dense[name].device)
            errors[name, k] = float(((delta @ h) * delta).sum())
            sizes[name, k] = size
        total += sizes[name, 0]
    at = {name: 0 for name in matrices if name != tied_name}
    while True:
        moves = [((errors[n, k] - errors[n, k + 1]) / max(sizes[n, k + 1] - sizes[n, k], 1), n)
                 for n, k in at.items() if k + 1 < len(levels)
                 and total + sizes[n, k + 1] - sizes[n, k] <= float(budget) * MB]
        if not moves:
            break
        _, name = max(moves)
        total += sizes[name, at[name] + 1] - sizes[name, at[name]]
        at[name] += 1
    counts = {levels[k].rescale: sum(1 for v in at.values() if v == k) for k in range(len(levels))}
    print(f"{spec}: linears per rescale {counts}", flush=True)
    settings = {name: levels[k] for name, k in at.items()}
    settings[tied_name] = embedding
    return settings


def save_config(path: Path, chosen: dict[str, TensorSetting], tied_name: str, counts: dict[str, int]) -> None:
    """The screened assignment as an evo CompressionConfig: the commonest linear setting as the default,
    the tied embedding/head as [embedding], every other linear under [tensors]."""
    from evo.compress.config import CompressionConfig

    linears = {n: s for n, s in chosen.items() if n != tied_name}
    keys = {s.key(): s for s in linears.values()}
    default = keys[max(keys, key=lambda k: sum(1 for s in linears.values() if s.key() == k))]
    path.parent.mkdir(parents=True, exist_ok=True)
    CompressionConfig(default=default, embedding=chosen[tied_name],
                      tensors={n: s for n, s in linears.items() if s != default}).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", required=True,
                        help=f"names of {list(CONFIGS)} or greedy:MB:LOW:HIGH:EMB (see greedy)")
    parser.add_argument("--max-tokens", type=int, default=8 * 512)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/dc-screen"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--save-configs", type=Path, default=None,
                        help="write each screened configuration here as an evo config (NAME.toml, ':' → '-')")
    args = parser.parse_args()
    setup_threads()
    start = time.perf_counter()
    loaded = load_model("smollm2-135m", device=args.device, dtype="float32")
    model, info = loaded.model, loaded.info
    params = dict(model.named_parameters())
    matrices = [lin.name for lin in info.linears()] + [t.name for t in info.non_decoder if len(t.shape) == 2]
    tied_name = [t.name for t in info.non_decoder if len(t.shape) == 2][0]
    dense = {n: params[n].detach().clone() for n in matrices}
    other = sum(p.numel() * p.element_size() for n, p in params.items() if n not in dense)  # as loaded (fp32)
    weights = sum(w.numel() for w in dense.values())
    int8 = other + sum(w.numel() + 2 * w.shape[0] for w in dense.values())
    tokens = tokenize_for_eval(loaded.tokenizer, read_text("wikitext2"))
    score = (lambda: perplexity(model, tokens, max_tokens=args.max_tokens).ppl) if args.max_tokens else (lambda: float("nan"))
    source_ppl = score()  # --max-tokens 0: bytes (and --save-configs) only
    calibration = default_stats_tokens(loaded.tokenizer)
    from evo.evaluate.hessian import load_or_collect
    from evo.evaluate.stats import collect_activation_stats

    hessians = load_or_collect(args.cache / "hessians", model, info, calibration)
    stats_file = args.cache / "stats.pt"
    if not stats_file.is_file():
        torch.save(collect_activation_stats(model, info, calibration), stats_file)
    stats = torch.load(stats_file, weights_only=False, map_location=args.device)
    print(f"source PPL {source_ppl:.3f} ({args.max_tokens} tokens); INT8 {int8 / MB:.2f} MB; ready at "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    print(f"{'config':<22} {'compr. MB':>9} {'ratio':>6} {'less':>6} {'bits/w':>6} {'PPL':>8} {'ΔPPL %':>7} {'s':>5}",
          flush=True)
    records = []
    for config in args.configs:
        tic = time.perf_counter()
        if config.startswith("greedy:"):
            chosen = greedy(config, matrices, tied_name, dense, stats, hessians, args.cache, other)
        else:
            chosen = {name: CONFIGS[config](*role_of(name, tied_name)) for name in matrices}
        frames = 0
        with torch.no_grad():
            for name in matrices:
                setting = chosen[name]
                path, size = level(args.cache, name, setting, dense[name], stats, hessians)
                frames += size
                params[name].copy_(torch.load(path, map_location=args.device))
        ppl = score()
        total = other + frames
        ratio = total / int8
        loss = 100 * (ppl / source_ppl - 1)
        print(f"{config:<22} {total / MB:>9.2f} {ratio:>6.3f} {100 * (1 - ratio):>5.1f}% {8 * frames / weights:>6.2f} "
              f"{ppl:>8.3f} {loss:>7.2f} {time.perf_counter() - tic:>5.0f}", flush=True)
        counts: dict[str, int] = {}
        for setting in chosen.values():
            counts[setting.key()] = counts.get(setting.key(), 0) + 1
        records.append({"config": config, "settings": counts, "tensors": {n: chosen[n].key() for n in matrices}, "compressed": total, "int8": int8, "ratio": ratio, "ppl": ppl,
                        "source_ppl": source_ppl, "loss": loss})
        if args.save_configs:
            save_config(args.save_configs / f"{config.replace(':', '-')}.toml", chosen, tied_name, counts)
        if args.json:
            args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
