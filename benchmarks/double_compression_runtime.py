"""Double Compression's claim at run time: weight memory resident in `compressed` mode (coded frames +
the tensors evo.runtime leaves dense) against INT8-resident weights (1 byte per weight + an fp16 scale
per row, same other tensors), and WikiText-2 perplexity against the source model's, for settings that
concentrate the codes (8-bit grids with rescale > 1, GPTQ/MSE rounding, l∞ sparsity, 5/6-bit grids).

    python benchmarks/double_compression_runtime.py [--device cuda] [--max-tokens 32768] [--deadline-s 480]
                                                   [--only NAME ...] [--json OUT] [--artifacts DIR]

Goal (issue 14): ≥ 40 % less than INT8-resident (ratio ≤ 0.60, ≈ 4.8 bits/weight incl. scales) at
≤ 5 % PPL loss. Every matrix (decoder linears and the tied embedding/head) takes the setting; the
embedding always rounds with rtn (no Hessian or statistics of its input exist) and is never pruned.
Each artifact is written (ANS or zstd per frame, whichever is smaller), loaded back with
resident="compressed" to count resident bytes (evo.runtime.resident_memory, exact) and loaded dense
for perplexity (every resident mode gives the same logits, tests/test_runtime.py). Settings run in
the order listed; the sweep stops before a setting that would end past --deadline-s.

Note for the table: the source model is SmolLM2-135M-Instruct as its Q4_1 GGUF, whose decoder
weights take at most 16 values per block of 32; a grid of ≥ 5 bits (or 8 bits with rescale ≤ 8)
nearly reproduces them, so low PPL loss there is partly the source's own quantization being re-found.

CPU smoke: --only int8-rtn dc-r4-rtn --max-tokens 1024
Device (benchmarks/device_runtime.sh): --device cuda --only dc-mix-r4r6-gptq-e4 b4-g32-zfloat-e3 dc-r6-gptq-e3
    int8-rtn --deadline-s 280 --artifacts DIR (≈ 50 s of statistics/Hessians + ≈ 15 s per rtn and ≈ 60 s per
    gptq setting on an H200). Settings were screened on the CPU with benchmarks/dc_screen.py
    (benchmarks/results/double_compression_runtime_cpu.md).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from _common import setup_threads

from evo.compress.artifact import load, write_artifact
from evo.compress.config import CompressionConfig
from evo.compress.model import compress_model
from evo.compress.settings import TensorSetting
from evo.constants import MB
from evo.data.corpus import default_stats_tokens, read_text
from evo.evaluate.perplexity import perplexity, tokenize_for_eval
from evo.modelio import load_model
from evo.runtime import resident_memory


def _ch8(rescale: float, quantizer: str = "rtn", sparsity: float = 0.0) -> TensorSetting:
    """Double Compression's grid: 8-bit, per output channel, symmetric, step × rescale."""
    return TensorSetting(bits=8, group_size=None, symmetric=True, rescale=rescale, sparsity=sparsity,
                         prune_criterion="linf" if sparsity else "magnitude", quantizer=quantizer)


# name → setting, in sweep order: the INT8 reference, Double Compression's rtn grid, then what
# evo adds (error-feedback rounding at coarser steps, sparsity, smaller grids).
SETTINGS: dict[str, TensorSetting] = {
    "int8-rtn": _ch8(1.0),
    "dc-r2-rtn": _ch8(2.0),
    "dc-r4-rtn": _ch8(4.0),
    "dc-r4-gptq": _ch8(4.0, "gptq"),
    "dc-r6-gptq": _ch8(6.0, "gptq"),
    "dc-r8-gptq": _ch8(8.0, "gptq"),
    "dc-r8-gptq-e4": _ch8(8.0, "gptq"),  # the tied embedding/head at rescale 4 (EMBEDDING)
    "dc-r4-gptq-s20": _ch8(4.0, "gptq", 0.2),
    "dc-r6-mse": _ch8(6.0, "mse"),
    "b6-ch-gptq": TensorSetting(bits=6, group_size=None, symmetric=True, quantizer="gptq"),
    "b5-g128-gptq": TensorSetting(bits=5, group_size=128, quantizer="gptq"),
    "b5-ch-gptq": TensorSetting(bits=5, group_size=None, symmetric=True, quantizer="gptq"),
    "b4-g128-gptq": TensorSetting(bits=4, group_size=128, quantizer="gptq"),
    # 8-bit per channel, rtn embedding at rescale 3 (screened on the CPU, benchmarks/dc_screen.py).
    "dc-r6-gptq-e3": _ch8(6.0, "gptq"),
    # 8-bit per channel gptq, rescale 6 or (65 linears, benchmarks/configs/) 4, embedding r4 rtn.
    "dc-mix-r4r6-gptq-e4": _ch8(6.0, "gptq"),
    # Not the 8-bit setting: the source GGUF's own grid (Q4_1: 4-bit, 32 columns, fp16 scale and
    # minimum), which re-finds the decoder weights nearly exactly; the Q8_0 embedding 8-bit r3.
    "b4-g32-zfloat-e3": TensorSetting(bits=4, group_size=32, zero_point="float"),
}

# Settings whose tied embedding/head takes another setting than the linears (always rtn, unpruned):
# at r = 8 the rtn-rounded head costs most of the loss (CPU smoke: dc-r8-gptq +25.7 % PPL on 1024 tokens).
EMBEDDING: dict[str, TensorSetting] = {"dc-r8-gptq-e4": _ch8(4.0), "dc-r6-gptq-e3": _ch8(3.0),
                                      "b4-g32-zfloat-e3": _ch8(3.0)}

# Settings whose linears of some roles (evo.types LINEAR_ROLES) take another setting than SETTINGS[name].
ROLES: dict[str, dict[str, TensorSetting]] = {}

# Settings given per tensor by an evo config in benchmarks/configs/ (written by benchmarks/dc_screen.py
# --save-configs for SmolLM2-135M): SETTINGS[name] is that config's default, its [tensors] the rest.
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
FILES: dict[str, str] = {"dc-mix-r4r6-gptq-e4": "dc-mix-r4r6-gptq-e4.toml"}


def config_for(name: str, info, tied: bool) -> CompressionConfig:
    """The CompressionConfig of a named setting for a model described by `info` (evo.types.ModelInfo)."""
    setting = SETTINGS[name]
    if name in FILES:
        config = CompressionConfig.load(CONFIGS_DIR / FILES[name])
        if config.default != setting:
            raise ValueError(f"{FILES[name]}: default {config.default} is not SETTINGS[{name!r}]")
        return config if tied else replace(config, head=config.embedding)
    embedding = EMBEDDING.get(name) or replace(setting, quantizer="rtn", sparsity=0.0, prune_criterion="magnitude")
    roles = ROLES.get(name, {})
    tensors = {lin.name: roles[lin.role] for lin in info.linears() if lin.role in roles}
    if tied:  # the head is the embedding: [embedding] sets both
        return CompressionConfig(default=setting, embedding=embedding, tensors=tensors)
    return CompressionConfig(default=setting, embedding=embedding, head=embedding, tensors=tensors)


def settings_of(name: str) -> list[TensorSetting]:
    """Every setting a named entry uses on the linears (what decides the statistics it needs)."""
    if name in FILES:
        return [SETTINGS[name], *dict(CompressionConfig.load(CONFIGS_DIR / FILES[name]).tensors).values()]
    return [SETTINGS[name], *ROLES.get(name, {}).values()]


def resident_figures(artifact: Path) -> dict:
    """Bytes resident in compressed mode (LRU cap 0) and of the same model with INT8-resident matrices."""
    model, _ = load(artifact, resident="compressed")
    memory = resident_memory(model)
    coded = model.evo_runtime.store.coded.values()
    weights = sum(math.prod(c.shape) for c in coded)
    int8 = memory.tensor_bytes + sum(math.prod(c.shape) + 2 * c.shape[0] for c in coded)
    del model
    return {"compressed": memory.total_bytes, "frames": memory.frame_bytes, "other": memory.tensor_bytes,
            "int8": int8, "weights": weights}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-tokens", type=int, default=64 * 512, help="WikiText-2 tokens scored (512-token windows)")
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), default=None, help="these settings, in this order")
    parser.add_argument("--deadline-s", type=float, default=480.0, help="stop before a setting that would end later")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--artifacts", type=Path, default=None,
                        help="write the artifacts into this folder, one per setting (default: a temporary folder)")
    args = parser.parse_args()
    start = time.perf_counter()
    setup_threads()
    names = args.only or list(SETTINGS)
    loaded = load_model(args.model, device=args.device, dtype="float32")
    tied = bool(getattr(loaded.model.config, "tie_word_embeddings", False))
    dense_state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    tokens = tokenize_for_eval(loaded.tokenizer, read_text("wikitext2"))
    source_ppl = perplexity(loaded.model, tokens, max_tokens=args.max_tokens).ppl
    calibration = default_stats_tokens(loaded.tokenizer)
    workdir = args.artifacts or Path(tempfile.mkdtemp(prefix="evo-dc-runtime-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stats = hessians = None
    used = [setting for n in names for setting in settings_of(n)]
    if any(s.quantizer == "mse" or s.prune_criterion == "linf" for s in used):
        from evo.evaluate.stats import collect_activation_stats

        stats = collect_activation_stats(loaded.model, loaded.info, calibration)
    if any(s.quantizer == "gptq" for s in used):
        from evo.evaluate.hessian import collect_hessians

        hessians = collect_hessians(loaded.model, loaded.info, calibration, workdir / "hessians")
    print(f"source model {args.model}: WikiText-2 PPL {source_ppl:.3f} ({args.max_tokens} tokens, {args.device}); "
          f"statistics/Hessians ready at {time.perf_counter() - start:.0f} s", flush=True)
    print(f"{'setting':<16} {'INT8 MB':>8} {'compr. MB':>9} {'ratio':>6} {'less':>6} {'bits/w':>6} {'PPL':>8} "
          f"{'ΔPPL %':>7} {'goal':>5} {'s':>4}", flush=True)
    records, longest = [], 0.0
    for name in names:
        elapsed = time.perf_counter() - start
        if elapsed + longest > args.deadline_s:
            print(f"deadline: stopped at {elapsed:.0f} s before {names[names.index(name):]}", flush=True)
            break
        tic = time.perf_counter()
        setting = SETTINGS[name]
        loaded.model.load_state_dict(dense_state)
        result = compress_model(loaded, None, config_for(name, loaded.info, tied), stats=stats, hessians=hessians, measure=False)
        out = workdir / name
        write_artifact(out, loaded.model, loaded.tokenizer, result, base_model=loaded.info.model_id, overwrite=True)
        del result
        figures = resident_figures(out)
        model, _ = load(out, device=args.device)
        ppl = perplexity(model, tokens, max_tokens=args.max_tokens).ppl
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        seconds = time.perf_counter() - tic
        longest = max(longest, seconds)
        ratio = figures["compressed"] / figures["int8"]
        loss = 100 * (ppl / source_ppl - 1)
        bits = 8 * figures["frames"] / figures["weights"]
        goal = ratio <= 0.60 and loss <= 5.0
        print(f"{name:<16} {figures['int8'] / MB:>8.2f} {figures['compressed'] / MB:>9.2f} {ratio:>6.3f} "
              f"{100 * (1 - ratio):>5.1f}% {bits:>6.2f} {ppl:>8.3f} {loss:>7.2f} {'yes' if goal else 'no':>5} "
              f"{seconds:>4.0f}", flush=True)
        records.append({"setting": name, **setting.to_dict(), **figures, "ratio": ratio, "ppl": ppl,
                        "source_ppl": source_ppl, "ppl_loss_pct": loss, "bits_per_weight": bits, "goal": goal})
    print("ratio = compressed-resident / INT8-resident weight bytes (both with the same norms); bits/w = coded "
          "frames per matrix weight, scales included. The source GGUF's decoder weights are Q4_1: grids of ≥ 5 "
          f"bits nearly reproduce them. Artifacts in {workdir}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
