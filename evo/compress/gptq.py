"""The `gptq` quantizer (Frantar et al., 2022): columns are rounded one at a time and each rounding
error is pushed onto the columns not yet rounded through the inverse Hessian of the layer input.

H = E[x xᵀ] of the linear's input (evo.evaluate.hessian), damped by GPTQ_DAMP of its mean diagonal.
With U the upper Cholesky factor of H⁻¹, rounding column j to q_j leaves the error e = (w_j − q_j) / U_jj,
and the columns k > j absorb −e·U_jk (the OBS update); columns are processed in blocks of
GPTQ_BLOCK_SIZE whose updates reach the rest of the matrix in one matmul ("lazy batch" updates).
The grid of each group is computed when the algorithm reaches the group, from the weights as updated
so far (rtn's min/max grid, or mse's weighted clip search with GPTQ_GRID = "mse"), so the codes lie on
the same grids rtn writes and decode the same way. With activation order (act_order=True) columns go
by decreasing H_jj and the groups stay the static column ranges, their grids computed up front.
With a prune mask (sparsity > 0, mask from the prune operator) pruned weights are rounded to exactly 0
and their error is compensated like any other (SparseGPT's rule), so zeros stay exact zeros.
"""

from __future__ import annotations

import torch

from evo.compress.grid import QuantGrid, compute_grid, effective_group_size, num_groups, symmetric_midpoint
from evo.compress.mse import mse_grid
from evo.compress.quantize import QuantizedTensor, register_quantizer
from evo.compress.registry import CompressionState
from evo.compress.settings import TensorSetting
from evo.errors import EvoError

GPTQ_DAMP = 0.01  # fraction of the mean of diag(H) added to the diagonal (the reference's percdamp)
GPTQ_BLOCK_SIZE = 128  # columns per lazy-batch block (rounded down to a multiple of the group size)
GPTQ_ACT_ORDER = True  # lower output error than natural order on 20 of 21 SmolLM2 linears (layers 2, 15, 28; 3-bit g128)
GPTQ_GRID = "mse"  # how each group's grid is chosen: "rtn" (min/max) or "mse" (weighted clip search)
_DAMP_RETRIES = 4  # a Hessian that is not positive definite gets 10x more damping, this many times


def inverse_hessian_factor(hessian: torch.Tensor, damp: float = GPTQ_DAMP) -> torch.Tensor:
    """Upper Cholesky factor U of (H + λI)⁻¹, λ = damp · mean(diag H), float32; columns that never
    saw an input (H_jj = 0) get H_jj = 1 so the factorisation exists."""
    h = hessian.detach().to(torch.float64).clone()
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise EvoError(f"the Hessian must be square, got shape {tuple(h.shape)}")
    if not bool(torch.isfinite(h).all()):
        raise EvoError("the Hessian contains NaN or inf: recollect it from the dense model")
    diagonal = torch.diagonal(h)
    dead = diagonal == 0
    h[dead, dead] = 1.0
    mean = float(torch.diagonal(h).mean())
    lam = damp * (mean if mean > 0 else 1.0)
    for _ in range(_DAMP_RETRIES + 1):
        damped = h + lam * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
        chol, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper.to(torch.float32)
        lam *= 10.0
    raise EvoError("the Hessian is not positive definite even with heavy damping: recollect it on more tokens")


def group_grid(weight: torch.Tensor, setting: TensorSetting, mask: torch.Tensor | None,
                importance: torch.Tensor, grid: str) -> QuantGrid:
    if grid == "mse":
        return mse_grid(weight, setting, mask, importance)
    return compute_grid(weight, setting, mask)


def gptq_quantize(
    weight: torch.Tensor,
    setting: TensorSetting,
    hessian: torch.Tensor,
    prune_mask: torch.Tensor | None = None,
    *,
    damp: float = GPTQ_DAMP,
    block_size: int = GPTQ_BLOCK_SIZE,
    act_order: bool = GPTQ_ACT_ORDER,
    grid: str = GPTQ_GRID,
) -> QuantizedTensor:
    """GPTQ codes of `weight` [out, in] on the grids of `setting`, for inputs whose E[x xᵀ] is
    `hessian` [in, in]. Runs on the weight's device; deterministic. One job of the batched loop
    (evo.compress.gptq_batch), so a level the search precomputed in a batch is bit for bit this."""
    from evo.compress.gptq_batch import GptqJob, gptq_quantize_many

    if weight.ndim != 2:
        raise EvoError(f"quantization needs a 2-D weight [out, in], got shape {tuple(weight.shape)}")
    if tuple(hessian.shape) != (weight.shape[1], weight.shape[1]):
        raise EvoError(f"the Hessian has shape {tuple(hessian.shape)}, expected ({weight.shape[1]}, {weight.shape[1]})")
    (quantized,) = gptq_quantize_many([GptqJob(weight, setting, prune_mask)], hessian, damp=damp,
                                      block_size=block_size, act_order=act_order, grid=grid)
    return quantized


def _column_grid(scales: torch.Tensor, zeros: torch.Tensor | None, k: int):
    return scales[:, k].float(), (zeros[:, k].float() if zeros is not None else None)


def _round_column(x: torch.Tensor, step: torch.Tensor, zero: torch.Tensor | None, setting: TensorSetting, top: int):
    """(code, dequantized value) of one column, with evo.compress.quantize's formulas."""
    if setting.symmetric:
        mid = symmetric_midpoint(setting.bits)
        s = torch.round(x / step).clamp(-mid, mid)
        return s + mid, s * step
    if setting.zero_point == "int":
        c = (torch.round(x / step) + zero).clamp(0, top)
        return c, (c - zero) * step
    c = torch.round((x - zero) / step).clamp(0, top)
    return c, c * step + zero


@register_quantizer("gptq")
def _gptq_quantizer(state: CompressionState) -> QuantizedTensor:
    if state.hessian is None:
        raise EvoError(
            "quantizer 'gptq' needs the Hessian of the linear's input: collect it with "
            "evo.evaluate.hessian.collect_hessians (evo compress does) or use quantizer 'rtn' or 'mse'"
        )
    return gptq_quantize(state.weight, state.setting, state.hessian, state.prune_mask)
