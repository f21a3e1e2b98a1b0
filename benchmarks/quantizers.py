"""rtn vs mse vs gptq: uniform artifacts of SmolLM2-135M at 2, 3 and 4 bits, g128 and g64 — artifact
bytes on disk, WikiText-2 perplexity of the artifact loaded back with evo.load, the wall time to
quantize the whole model (compress_model without size measurement) and to entropy-code and write it.

    python benchmarks/quantizers.py [--bits 2 3 4] [--group-sizes 128 64] [--quantizers rtn mse gptq]
                                    [--max-tokens 32768] [--device cpu|cuda]

Every decoder linear takes the row's quantizer (asymmetric, integer zero point); the tied embedding is
8-bit rtn with the same group size in every row, so rows differ only in how the linears are rounded.
Statistics (mse) and Hessians (gptq) come once from the dense model on the embedded corpus's first
sequences (what `evo compress` uses by default, or --calibration); their collection time is printed
apart. Quantization runs on --device (the model is float32 there).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import bytes_on_disk, setup_threads

from evo.baselines import uniform_config
from evo.compress.artifact import load, write_artifact
from evo.compress.model import compress_model
from evo.data.corpus import default_stats_tokens, read_text
from evo.evaluate.hessian import collect_hessians
from evo.evaluate.perplexity import perplexity, tokenize_for_eval
from evo.evaluate.stats import collect_activation_stats
from evo.modelio import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--group-sizes", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--quantizers", nargs="+", default=["rtn", "mse", "gptq"])
    parser.add_argument("--max-tokens", type=int, default=64 * 512, help="WikiText-2 tokens scored (whole windows)")
    parser.add_argument("--calibration", default=None, help="CalibrationSet JSON (default: embedded corpus)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    setup_threads()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    loaded = load_model(args.model, device=args.device, dtype="float32")
    dense = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    eval_tokens = tokenize_for_eval(loaded.tokenizer, read_text("wikitext2"))
    if args.calibration:
        from evo.data.calibset import CalibrationSet

        calibration = CalibrationSet.load(args.calibration).calibration.token_ids
    else:
        calibration = default_stats_tokens(loaded.tokenizer)
    workdir = Path(tempfile.mkdtemp(prefix="evo-quantizers-"))
    print(f"dense WikiText-2 PPL {perplexity(loaded.model, eval_tokens, max_tokens=args.max_tokens).ppl:.3f} "
          f"({args.max_tokens} tokens, fp32 in memory, {args.device})")

    stats = hessians = None
    if "mse" in args.quantizers:
        tic = time.perf_counter()
        stats = collect_activation_stats(loaded.model, loaded.info, calibration)
        sync()
        print(f"activation statistics: {calibration.shape[0]} x {calibration.shape[1]} tokens, "
              f"{time.perf_counter() - tic:.1f} s")
    if "gptq" in args.quantizers:
        tic = time.perf_counter()
        hessians = collect_hessians(loaded.model, loaded.info, calibration, workdir / "hessians")
        sync()
        print(f"Hessians: {calibration.shape[0]} x {calibration.shape[1]} tokens, {time.perf_counter() - tic:.1f} s")

    header = (f"{'quantizer':<9} {'bits':>4} {'group':>5} {'artifact MB':>11} {'PPL':>9} {'quantize s':>10} "
              f"{'write s':>7}")
    print(header)
    for group_size in args.group_sizes:
        for bits in args.bits:
            for quantizer in args.quantizers:
                loaded.model.load_state_dict(dense)
                config = uniform_config(bits, group_size=group_size, quantizer=quantizer)
                sync()
                tic = time.perf_counter()
                result = compress_model(loaded, None, config, stats=stats, hessians=hessians, measure=False)
                sync()
                seconds = time.perf_counter() - tic
                out = workdir / f"{quantizer}-b{bits}-g{group_size}"
                tic = time.perf_counter()
                write_artifact(out, loaded.model, loaded.tokenizer, result, base_model=loaded.info.model_id)
                write_seconds = time.perf_counter() - tic
                model, _ = load(out, device=args.device)
                ppl = perplexity(model, eval_tokens, max_tokens=args.max_tokens).ppl
                del model
                on_disk = bytes_on_disk(out)
                print(f"{quantizer:<9} {bits:>4} {group_size:>5} {on_disk / 1e6:>11.3f} {ppl:>9.3f} {seconds:>10.1f} "
                      f"{write_seconds:>7.1f}", flush=True)
    print(f"artifacts in {workdir}")


if __name__ == "__main__":
    main()
