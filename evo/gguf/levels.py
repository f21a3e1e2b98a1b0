"""One GGUF "level" of a weight: the tensor llama.cpp computes with when `weight` is stored as
`qtype`. A pure function of (weight, type, importance, Hessian), so the search's evaluator (and any
precomputed level database) can materialise GGUF types exactly as the writer encodes them: both call
`encode`, the one place that chooses between the plain encoder and GPTQ's.
"""

from __future__ import annotations

import numpy as np
import torch

from evo.gguf import quants


@torch.no_grad()
def encode(weight: torch.Tensor, qtype: str, importance: torch.Tensor | None = None,
           hessian: torch.Tensor | None = None, *, name: str = "tensor") -> np.ndarray:
    """The GGUF bytes of `weight` in `qtype` (evo.gguf.quants.quantize's array): evo's encoder, fits
    weighted by `importance` (Σx² per input column); with `hessian` (E[x xᵀ] of the input) and a
    quantized type, GPTQ's error feedback over the blocks (evo.gguf.gptq)."""
    qt = quants.quant_type(qtype)
    if hessian is None or qt.name in quants.FLOAT_TYPES:
        return quants.quantize(weight, qt.name, importance, name=name)
    from evo.gguf.gptq import gptq_quantize

    return gptq_quantize(weight, qt.name, hessian, importance, name=name)


@torch.no_grad()
def gguf_level(weight: torch.Tensor, qtype: str, importance: torch.Tensor | None = None,
               hessian: torch.Tensor | None = None) -> torch.Tensor:
    """The float32 weight (on weight's device) that the GGUF bytes of `weight` in `qtype` decode to:
    `encode` then ggml's decoding, bit for bit what `evo.gguf.writer.encode_tensors` writes and
    llama.cpp reads. Rows are encoded independently (GPTQ too: its feedback runs along a row), so
    llama.cpp's q/k row permutation does not change them."""
    qt = quants.quant_type(qtype)
    weight = weight.detach()
    if qt.name == "F32":
        return weight.to(torch.float32).clone()
    if importance is not None:
        importance = importance.to(weight.device)
    data = encode(weight.to(torch.float32), qt.name, importance, hessian)
    return quants.dequantize(data, qt.name, tuple(weight.shape), device=weight.device)
