"""One GGUF "level" of a weight: the tensor llama.cpp computes with when `weight` is stored as
`qtype`. A pure function of (weight, type, importance), so the search's evaluator (and any
precomputed level database) can materialise GGUF types exactly as the writer encodes them.
"""

from __future__ import annotations

import torch

from evo.gguf import quants


@torch.no_grad()
def gguf_level(weight: torch.Tensor, qtype: str, importance: torch.Tensor | None = None) -> torch.Tensor:
    """The float32 weight (on weight's device) that the GGUF bytes of `weight` in `qtype` decode to:
    evo's encoder (fits weighted by `importance`, Σx² per input column) then ggml's decoding, bit
    for bit what `evo.gguf.writer.encode_tensors` writes and llama.cpp reads. Rows are encoded
    independently, so llama.cpp's q/k row permutation does not change them."""
    qt = quants.quant_type(qtype)
    weight = weight.detach()
    if qt.name == "F32":
        return weight.to(torch.float32).clone()
    if importance is not None:
        importance = importance.to(weight.device)
    data = quants.quantize(weight.to(torch.float32), qt.name, importance)
    return quants.dequantize(data, qt.name, tuple(weight.shape), device=weight.device)
