"""GPTQ error feedback for evo's GGUF encoders: a weight is encoded block by block along its input
columns, and each block's rounding error is pushed onto the columns not yet encoded (Frantar et al., 2022).

Generic over the formats (evo.gguf.quants): llama.cpp's blocks are consecutive columns (32 for the
legacy types and IQ4_NL, 256 for the k-quants), and a format's bytes are block-local, so block b is
encoded with evo's encoder from the CURRENT (error-updated) weights of its columns (scales and minimums
fitted then, weighted by the imatrix as the plain encoder does; the 32-block types' row σ² is the
ORIGINAL row's, so every block's fit is well defined) and the row's bytes are the blocks' concatenated.
With U the upper Cholesky factor of (H + λI)⁻¹ (evo.compress.gptq.inverse_hessian_factor: the same
damping and dead-column rule as evo's gptq), fixing block b's columns at Q_b leaves E_b = W_b − Q_b and
the optimal (OBS) update of the later columns is W[:, rest] −= E_b · U_bb⁻¹ · U_b,rest. Updates reach
the rest of the matrix in one matmul per LAZY_COLUMNS columns (the "lazy batch" of GPTQ).

A block is rounded at once (no feedback between its own columns: per-column steps would need each
format's grid apart from its fit), and there is no activation order: a block is a fixed run of
consecutive columns, so the columns cannot be visited in another order. Rows are independent: the loop
runs over column blocks, vectorised over all rows, on the weight's device; deterministic.
"""

from __future__ import annotations

import numpy as np
import torch

from evo.compress.gptq import GPTQ_DAMP, inverse_hessian_factor
from evo.errors import EvoError
from evo.gguf import quants

LAZY_COLUMNS = 256  # columns whose errors reach the later columns in one matmul (a multiple of every block)


@torch.no_grad()
def gptq_encode(weight: torch.Tensor, qtype: str, hessian: torch.Tensor, importance: torch.Tensor | None = None,
                *, damp: float = GPTQ_DAMP, name: str = "tensor") -> torch.Tensor:
    """The GGUF bytes [rows, row_bytes] (uint8, on weight's device) of `weight` [rows, cols] in `qtype`,
    GPTQ-encoded for inputs whose E[x xᵀ] is `hessian` [cols, cols]. `importance` weights the block fits
    as in evo.gguf.quants.quantize (None: columns count equally)."""
    qt = quants.quant_type(qtype)
    if qt.name in quants.FLOAT_TYPES:
        raise EvoError(f"tensor {name}: GPTQ applies to quantized GGUF types, not {qt.name}")
    if weight.dim() != 2:
        raise EvoError(f"tensor {name} has shape {tuple(weight.shape)}: only 2-D weights can be stored as {qt.name}")
    rows, cols = weight.shape
    if tuple(hessian.shape) != (cols, cols):
        raise EvoError(f"tensor {name}: the Hessian has shape {tuple(hessian.shape)}, expected ({cols}, {cols})")
    quants.check_allowed(name, tuple(weight.shape), qt.name)
    x = quants.checked_weight(weight, name).clone()
    device = x.device
    qw = quants.checked_importance(importance, cols, name, device)
    row_sigma2 = (x * x).mean(-1, keepdim=True)  # the original rows' σ², fixed for every block
    u = inverse_hessian_factor(hessian.to(device), damp)
    size, width = qt.block_size, qt.type_size
    lazy = max(LAZY_COLUMNS // size, 1) * size
    out = torch.empty(rows, cols // size * width, dtype=torch.uint8, device=device)
    for start in range(0, cols, lazy):
        stop = min(start + lazy, cols)
        scaled = torch.empty(rows, stop - start, dtype=torch.float32, device=device)  # E_b · U_bb⁻¹ per block
        for b0 in range(start, stop, size):
            b1 = b0 + size
            block = x[:, b0:b1]
            data = quants.encode_rows(block, qt.name, qw[b0:b1], row_sigma2)
            out[:, b0 // size * width:b1 // size * width] = data
            if b1 == cols:
                break
            error = block - quants.dequantize(data, qt.name, (rows, size), device=device)
            s = torch.linalg.solve_triangular(u[b0:b1, b0:b1], error, upper=True, left=False)
            scaled[:, b0 - start:b1 - start] = s
            if b1 < stop:  # the rest of this lazy batch now; the columns after it in one matmul below
                x[:, b1:stop] -= s @ u[b0:b1, b1:stop]
        if stop < cols:
            x[:, stop:] -= scaled @ u[start:stop, stop:]
    return out


def gptq_quantize(weight: torch.Tensor, qtype: str, hessian: torch.Tensor, importance: torch.Tensor | None = None,
                  *, damp: float = GPTQ_DAMP, name: str = "tensor") -> np.ndarray:
    """gptq_encode's bytes as a CPU [rows, row_bytes] uint8 array, as evo.gguf.quants.quantize returns."""
    return gptq_encode(weight, qtype, hessian, importance, damp=damp, name=name).cpu().numpy()
