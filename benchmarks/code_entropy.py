"""Why the lossless stage gains less on the default model than Double Compression reports (issue 14):
the coded bits per weight of 8-bit per-channel RTN codes (rescale 1 and 4) of the model's own decoder
weights against synthetic weights of the same shape and per-row mean and standard deviation drawn from
a Gaussian and from a Laplace distribution (the bell-shaped weights of a model trained in bf16).

    python benchmarks/code_entropy.py [--layers 0,10,20] [--model smollm2-135m]

Bits per weight are the exact frames of evo's coder (encode_tensor: codes + scales), summed over the
decoder linears of the chosen layers. SmolLM2-135M's GGUF stores its decoder weights as Q4_1 (16
levels per block of 32), which shapes the codes' distribution: this measures how much.
"""

from __future__ import annotations

import argparse

import torch
from _common import setup_threads

from evo.compress.apply import compress_tensor
from evo.compress.coding import encode_tensor
from evo.compress.settings import TensorSetting
from evo.modelio import load_model

ROLES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def channel8(rescale: float) -> TensorSetting:
    return TensorSetting(bits=8, group_size=None, symmetric=True, rescale=rescale, quantizer="rtn")


def synthetic(weight: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    mean = weight.mean(dim=1, keepdim=True)
    std = weight.std(dim=1, keepdim=True)
    if kind == "gaussian":
        noise = torch.randn(weight.shape, generator=generator)
    else:  # laplace with unit variance: difference of two exponentials / sqrt(2)
        u = torch.rand(weight.shape, generator=generator).clamp_min(1e-12)
        v = torch.rand(weight.shape, generator=generator).clamp_min(1e-12)
        noise = (torch.log(u) - torch.log(v)) / 2 ** 0.5
    return mean + std * noise


def coded_bits(weight: torch.Tensor, setting: TensorSetting) -> int:
    encoded = encode_tensor(compress_tensor(weight, setting).quantized)
    return 8 * sum(len(frame) for frame in encoded.frames.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", default="0,10,20", help="decoder layers to measure (comma-separated)")
    parser.add_argument("--rescales", default="1,4")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    setup_threads()
    loaded = load_model(args.model, dtype="float32")
    layers = [int(x) for x in args.layers.split(",")]
    rescales = [float(x) for x in args.rescales.split(",")]
    generator = torch.Generator().manual_seed(args.seed)
    sources = ("model", "gaussian", "laplace")
    bits = {(source, r): 0 for source in sources for r in rescales}
    weights = 0
    n_rows = 0
    peak = {source: 0.0 for source in ("model", "gaussian", "laplace")}
    for name, param in loaded.model.named_parameters():
        parts = name.split(".")
        if param.ndim != 2 or parts[-2] not in ROLES or "layers" not in parts:
            continue
        if int(parts[parts.index("layers") + 1]) not in layers:
            continue
        weight = param.detach().float()
        weights += weight.numel()
        n_rows += weight.shape[0]
        variants = {"model": weight, "gaussian": synthetic(weight, "gaussian", generator),
                    "laplace": synthetic(weight, "laplace", generator)}
        for source, tensor in variants.items():
            centred = tensor - tensor.mean(dim=1, keepdim=True)
            peak[source] += float((centred.abs().amax(dim=1) / centred.std(dim=1)).sum())
            for r in rescales:
                bits[(source, r)] += coded_bits(tensor, channel8(r))
    print(f"{args.model}: decoder linears of layers {layers}, {weights:,} weights; 8-bit per-channel rtn, "
          "coded bits per weight (codes + scales, evo's best coder); row max/std = mean over rows of "
          "max|w - mean| / std, which sets the per-channel step")
    print(f"{'weights':<28}" + "".join(f"{'rescale ' + format(r, 'g'):>14}" for r in rescales) + f"{'row max/std':>14}")
    labels = {"model": "the model's (Q4_1 source)", "gaussian": "Gaussian, same row mean/std",
              "laplace": "Laplace, same row mean/std"}
    for source in sources:
        print(f"{labels[source]:<28}" + "".join(f"{bits[(source, r)] / weights:>14.3f}" for r in rescales)
              + f"{peak[source] / n_rows:>14.2f}")


if __name__ == "__main__":
    main()
