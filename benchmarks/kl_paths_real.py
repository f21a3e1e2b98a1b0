"""Does the search's KL estimate depend on how it is computed? (issue 19, session 28)

Session 28's search loop reported the warm-up genome's top-k + tail estimate at +0.323 % of the exact
KL, where sessions 26-27 had +0.143 % (same genome, same exact KL 11.718045). Between them came the
one-pass KL kernel (its CHUNK × WARPS × STEPS) and stage graphs. This script scores one heavily
compressed configuration of the real model on real text through each path, side by side on the same
weights, and prints the estimate per token of each with the exact KL from full logits:

  eager torch     Evaluator, compile "off", KL row sums by torch ops (the sessions 26-27 arithmetic)
  eager kernel    compile "off", the Triton kernel at its shipped shape
  eager kernel S  compile "off", the kernel at CHUNKxWARPSxSTEPS[w] S (--shapes; where Triton is)
  stage graphs    compile "reduce-overhead": one CUDA graph of forward + KL per stage
  graph trees     compile "reduce-overhead", stage_graphs=False (torch.compile's graphs of the forward)

  python benchmarks/kl_paths_real.py --device cuda --out $OUT/kl_paths_real     # after the bring-up
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evo.compress import TensorSetting  # noqa: E402
from evo.compress.config import CompressionConfig  # noqa: E402
from evo.constants import FINAL_STAGE  # noqa: E402
from evo.evaluate import kl_sums  # noqa: E402
from evo.evaluate.evaluator import Evaluator, FitnessConfig  # noqa: E402
from evo.evaluate.fastforward import FastForward  # noqa: E402
from evo.evaluate.metrics import exact_kl, topk_kl_sum  # noqa: E402
from evo.evaluate.reference import DenseReference  # noqa: E402
from evo.modelio import load_model  # noqa: E402


def text_ids(tokenizer, sequences: int, tokens: int) -> torch.Tensor:
    import os

    path = Path(os.environ.get("EVO_DATA_DIR", "../shared/data")) / "wikitext-2-raw" / "wiki.test.raw"
    ids = tokenizer(path.read_text()[: 4_000_000], return_tensors="pt").input_ids[0]
    return ids[: sequences * tokens].reshape(sequences, tokens)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--shapes", default="8192x8x1,4096x4x3")  # the shipped one is 4096x4x3w
    parser.add_argument("--graphs", default="stage,trees")
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--out", default="runs/kl-paths-real")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model("smollm2-135m", device=args.device, dtype="bfloat16")
    model, info = loaded.model, loaded.info
    sequences, tokens = args.sequences, args.tokens
    ids = text_ids(loaded.tokenizer, sequences, tokens).to(args.device)
    reference = DenseReference.compute(model, ids, top_k=256, tail_samples=16)
    config = CompressionConfig(default=TensorSetting(bits=args.bits, group_size=64))
    fitness = FitnessConfig(screen_sequences=min(4, sequences), screen_tokens=tokens, top_k=256, tail_samples=16, compile="off")
    evaluator = Evaluator(model, info, ids.cpu().numpy(), fitness, reference)
    results = {}

    def estimate(name: str) -> None:
        results[name] = evaluator.evaluate(config, FINAL_STAGE)
        print(f"{name}: {results[name]:.9f}", flush=True)

    evaluator.forward = FastForward(model, "off", evaluator.device).with_kl(functools.partial(topk_kl_sum,
                                                                                               row_sums="torch"))
    estimate("eager torch")
    evaluator.forward = FastForward(model, "off", evaluator.device)
    estimate("eager kernel")
    if kl_sums.TRITON:  # the kernel at other program shapes (CHUNKxWARPSxSTEPS[w])
        from evo.evaluate import _kl_triton

        shipped = (_kl_triton.CHUNK, _kl_triton.WARPS, _kl_triton.STEPS, _kl_triton.WORDS)
        for shape in filter(None, args.shapes.split(",")):
            chunk, warps, steps = (int(v) for v in shape.removesuffix("w").split("x"))
            _kl_triton.CHUNK, _kl_triton.WARPS, _kl_triton.STEPS = chunk, warps, steps
            _kl_triton.WORDS = shape.endswith("w")
            estimate(f"eager kernel {shape}")
        _kl_triton.CHUNK, _kl_triton.WARPS, _kl_triton.STEPS, _kl_triton.WORDS = shipped
    with torch.no_grad():
        evaluator.materialise(config)
        total = 0.0
        for start in range(0, sequences, 4):
            with torch.no_grad():
                evaluator.restore()
                dense = model(input_ids=ids[start:start + 4], use_cache=False).logits
                evaluator.materialise(config)
                total += float(exact_kl(dense, model(input_ids=ids[start:start + 4], use_cache=False).logits)
                               .double().sum())
    results["exact"] = total / (sequences * tokens)
    print(f"exact: {results['exact']:.9f}", flush=True)
    for kind in filter(None, args.graphs.split(",")):
        evaluator.forward = FastForward(model, "reduce-overhead", evaluator.device, stage_graphs=kind == "stage")
        estimate(f"{kind} graphs (first)")
        estimate(f"{kind} graphs")
        evaluator.restore()
        estimate(f"{kind} graphs after restore")
    lines = [f"{name}: {value:.9f} ({(value - results['exact']) / results['exact']:+.4%} of exact)"
             for name, value in results.items()]
    print("\n".join(lines))
    (out / "kl_paths_real.json").write_text(json.dumps({"argv": sys.argv, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
