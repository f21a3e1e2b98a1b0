"""The one-pass KL kernel's four row sums on the default model's real logits against torch's float64 sums
(issue 19, session 28): uniform RTN at --bits, a few rows of WikiText-2, each kernel shape of --shapes.
kl_kernel.py checks the sums on random logits; a compressed model's logits (bf16, peaks of ~60) are what
the search feeds the kernel. Runs on CUDA, or on a CPU through Triton's interpreter:

  TRITON_INTERPRET=1 PYTHONPATH=.:<a directory with triton> python benchmarks/kl_kernel_real.py --device cpu
  python benchmarks/kl_kernel_real.py --device cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evo.evaluate import kl_sums  # noqa: E402
from attention_paths import device_option  # noqa: E402
from kl_kernel import name, parse_configs  # noqa: E402
from kl_paths_real import compressed_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=device_option, default="cpu")
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--sequences", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--shapes", type=parse_configs, default="8192x8,4096x4x3,4096x4x3w",
                        help="the kernel's CHUNKxWARPS[xSTEPS][w][l], comma-separated")
    args = parser.parse_args()
    if not kl_sums.TRITON:
        raise SystemExit("needs Triton (pip install triton; on a CPU run with TRITON_INTERPRET=1)")
    from evo.evaluate import _kl_triton

    loaded, evaluator, config = compressed_model(args.device, args.sequences, args.tokens, args.bits)
    evaluator.materialise(config)
    with torch.no_grad():
        logits = loaded.model(input_ids=evaluator._device_ids, use_cache=False).logits
    flat = logits.reshape(-1, logits.shape[-1])
    top_ids = evaluator.reference.topk_ids.reshape(-1, evaluator.reference.topk_ids.shape[-1]).to(flat.device).long()
    exact = kl_sums.torch_row_sums(flat, top_ids)
    print(f"{flat.shape[0]} rows × {flat.shape[1]} logits ({flat.dtype}), uniform {args.bits}-bit RTN g64, "
          f"largest |logit| {float(flat.float().abs().max()):.1f}")
    for shape in args.shapes:
        got = _kl_triton.row_sums(flat, top_ids, *shape)
        peak = float((got[:, 0] - exact[:, 0]).abs().max())
        log_sum = float((got[:, 1] - exact[:, 1]).abs().max())
        tail = float(((got[:, 2] + got[:, 3]) - (exact[:, 2] + exact[:, 3])).abs().max())
        print(f"{name(shape)}: largest difference from float64: peak {peak:.1e}, log Σ {log_sum:.1e}, tail log-sum-exp {tail:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
