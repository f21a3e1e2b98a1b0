"""Does the search's KL estimate depend on how it is computed? (issue 19, session 28)

Session 28's search loop reported the warm-up genome's top-k + tail estimate at +0.323 % of the exact
KL, where sessions 26-27 had +0.143 % (same genome, same exact KL 11.718045). Between them came the
one-pass KL kernel (its CHUNK × WARPS × STEPS) and stage graphs. This script scores one heavily
compressed configuration of the real model on real text through each path, side by side on the same
weights, and prints the estimate per token of each with the exact KL from full logits:

  eager torch     Evaluator, compile "off", KL row sums by torch ops (the sessions 26-27 arithmetic)
  eager kernel    compile "off", the Triton kernel at its shipped shape
  eager kernel S  compile "off", the kernel at CHUNKxWARPS[xSTEPS][w][l] S (--shapes; where Triton is)
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evo.compress import TensorSetting  # noqa: E402
from evo.compress.config import CompressionConfig  # noqa: E402
from evo.constants import FINAL_STAGE  # noqa: E402
from evo.data.corpus import read_text  # noqa: E402
from evo.evaluate import kl_sums  # noqa: E402
from evo.evaluate.evaluator import Evaluator, FitnessConfig  # noqa: E402
from evo.evaluate.fastforward import FastForward  # noqa: E402
from evo.evaluate.metrics import topk_kl_sum  # noqa: E402
from evo.evaluate.perplexity import tokenize_for_eval  # noqa: E402
from evo.evaluate.reference import DenseReference  # noqa: E402
from evo.modelio import load_model  # noqa: E402
from attention_paths import device_option  # noqa: E402
from kl_kernel import name, parse_configs, shipped_shape, use_shape  # noqa: E402
from search_throughput import exact_kl_of  # noqa: E402

GRAPHS = ("stage", "trees")  # stage graphs, or torch.compile's graph trees over the forward


def graph_kinds(text: str) -> list[str]:
    """--graphs: a comma list of GRAPHS (argparse prints anything else in one line, exit 2)."""
    kinds = [kind for kind in text.split(",") if kind]
    unknown = [kind for kind in kinds if kind not in GRAPHS]
    if unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown)}: give a comma list of {', '.join(GRAPHS)}")
    return kinds


def compressed_model(device: str, sequences: int, tokens: int, bits: int):
    """(loaded model, its Evaluator, the config): the default model in bf16 with its top-256 + 16-sample
    reference on the first sequences × tokens of WikiText-2's test text, and uniform `bits`-bit RTN
    (group 64), not yet materialised. Too few tokens in the text ends the benchmark with one line."""
    loaded = load_model("smollm2-135m", device=device, dtype="bfloat16")
    ids = tokenize_for_eval(loaded.tokenizer, read_text("wikitext2"))
    if ids.size < sequences * tokens:
        raise SystemExit(f"--sequences {sequences} × --tokens {tokens} asks for {sequences * tokens} tokens; "
                         f"WikiText-2's test text has {ids.size}: ask for fewer")
    ids = ids[: sequences * tokens].reshape(sequences, tokens)
    reference = DenseReference.compute(loaded.model, ids, top_k=256, tail_samples=16)
    fitness = FitnessConfig(screen_sequences=min(4, sequences), screen_tokens=tokens, top_k=256, tail_samples=16)
    evaluator = Evaluator(loaded.model, loaded.info, ids, fitness, reference)
    return loaded, evaluator, CompressionConfig(default=TensorSetting(bits=bits, group_size=64))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=device_option, default="cuda")
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--shapes", type=parse_configs, default="8192x8,4096x4x3",
                        help="the kernel's CHUNKxWARPS[xSTEPS][w][l] besides the shipped one (_kl_triton's constants)")
    parser.add_argument("--graphs", type=graph_kinds, default="stage,trees")
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--out", default="runs/kl-paths-real")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded, evaluator, config = compressed_model(args.device, args.sequences, args.tokens, args.bits)
    model = loaded.model
    results = {}

    def estimate(name: str) -> None:
        results[name] = evaluator.evaluate(config, FINAL_STAGE)
        print(f"{name}: {results[name]:.9f}", flush=True)

    evaluator.forward = FastForward(model, "off", evaluator.device).with_kl(functools.partial(topk_kl_sum,
                                                                                               row_sums="torch"))
    estimate("eager torch")
    evaluator.forward = FastForward(model, "off", evaluator.device)
    estimate("eager kernel")
    if kl_sums.TRITON:  # the kernel at other program shapes (CHUNKxWARPS[xSTEPS][w][l])
        shipped = shipped_shape()
        for shape in args.shapes:
            use_shape(shape)
            estimate(f"eager kernel {name(shape)}")
        use_shape(shipped)
    results["exact"] = exact_kl_of(evaluator, config)["eager"]
    print(f"exact: {results['exact']:.9f}", flush=True)
    for kind in args.graphs:
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
