"""The `mse` quantizer: per group, the clip of the min/max grid that minimises the importance-weighted
squared error Σ_j w_j (W_ij − Q(W_ij))², with w_j = E[x_j²] of the linear's input (llama.cpp's imatrix).

The candidates shrink each group's range [lo, hi] by a clip ratio c (symmetric and integer zero point:
towards 0, which stays on the grid; float zero point: towards the range's middle) and build the grid
exactly as rtn does from that range (evo.compress.grid.grid_from_range), so the codes, scales and
zero points are those of an rtn grid and decode the same way. c = 1 is rtn's own grid and is always a
candidate, so at rescale 1 the weighted error is never above rtn's. A coarse pass over
CLIP_COARSE is refined around each group's best by CLIP_FINE_STEP. All groups are searched at once
(one tensor op per candidate). With rescale r ≠ 1 the chosen range's step is multiplied by r, as rtn's.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from evo.compress.grid import (
    QuantGrid,
    effective_group_size,
    grid_from_range,
    group_range,
    masked_groups,
    num_groups,
    symmetric_midpoint,
)
from evo.compress.quantize import QuantizedTensor, quantize, register_quantizer
from evo.compress.registry import CompressionState
from evo.compress.settings import TensorSetting
from evo.errors import EvoError

# Clip ratios of the coarse pass (1.0 first: rtn's grid wins ties) and the refinement around the best.
CLIP_COARSE = tuple(round(1.0 - 0.05 * i, 2) for i in range(15))  # 1.00 … 0.30
CLIP_FINE_STEP = 0.01
CLIP_FINE_SPAN = 4  # ± 4 fine steps around the coarse optimum
CLIP_MIN = 0.05


def importance_weights(state: CompressionState) -> torch.Tensor | None:
    """E[x_j²] up to a constant: the Hessian's diagonal, else ‖X_j‖₂² from activation statistics,
    else None (all weights 1)."""
    if state.hessian is not None:
        return torch.diagonal(state.hessian).float()
    if state.act_stats is not None:
        return state.act_stats.l2.float().pow(2)
    return None


def _group_importance(importance: torch.Tensor | None, in_features: int, group_size: int | None,
                      device: torch.device) -> torch.Tensor:
    """[G, g] weights; the padding of a ragged last group weighs 0."""
    g = effective_group_size(in_features, group_size)
    groups = num_groups(in_features, group_size)
    w = torch.ones(in_features, device=device) if importance is None else importance.to(device, torch.float32)
    if w.shape != (in_features,):
        raise EvoError(f"importance weights have shape {tuple(w.shape)}, expected ({in_features},)")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise EvoError("importance weights must be finite and non-negative; check the calibration statistics")
    return torch.cat([w, w.new_zeros(groups * g - in_features)]).reshape(groups, g)


def fake_quantize_groups(groups: torch.Tensor, grid: QuantGrid, setting: TensorSetting) -> torch.Tensor:
    """What evo.compress.quantize followed by dequantize gives, on groups [out, G, g] (same formulas)."""
    step = grid.scales.float().unsqueeze(-1)
    if setting.symmetric:
        mid = symmetric_midpoint(setting.bits)
        return torch.round(groups / step).clamp(-mid, mid) * step
    if setting.zero_point == "int":
        zero = grid.zeros.float().unsqueeze(-1)
        return ((torch.round(groups / step) + zero).clamp(0, grid.code_max) - zero) * step
    minimum = grid.zeros.float().unsqueeze(-1)
    return torch.round((groups - minimum) / step).clamp(0, grid.code_max) * step + minimum


def _clipped(lo: torch.Tensor, hi: torch.Tensor, clip: torch.Tensor, setting: TensorSetting):
    if setting.symmetric or setting.zero_point == "int":
        return lo * clip, hi * clip
    mid = (hi + lo) / 2
    half = (hi - lo) / 2 * clip
    return mid - half, mid + half


def mse_grid(
    weight: torch.Tensor,
    setting: TensorSetting,
    prune_mask: torch.Tensor | None = None,
    importance: torch.Tensor | None = None,
) -> QuantGrid:
    """The grid of every group of `weight` [out, in] whose clip ratio minimises the weighted error.

    importance: [in] non-negative weights per input column (E[x²]); None weighs every column 1.
    Pruned weights count as 0 (they are stored as the exact zero code).
    """
    groups = masked_groups(weight, setting, prune_mask)
    g = effective_group_size(weight.shape[1], setting.group_size)
    weights = _group_importance(importance, weight.shape[1], setting.group_size, groups.device)
    lo, hi = group_range(groups, setting)
    search = replace(setting, rescale=1.0)

    def error(clip: torch.Tensor) -> torch.Tensor:
        grid = grid_from_range(*_clipped(lo, hi, clip, setting), search, g)
        diff = groups - fake_quantize_groups(groups, grid, search)
        return (diff.square() * weights).sum(dim=-1)

    best_clip = torch.ones_like(lo)
    best_error = error(best_clip)
    fine = [CLIP_FINE_STEP * k for k in range(-CLIP_FINE_SPAN, CLIP_FINE_SPAN + 1) if k]
    for clip in CLIP_COARSE[1:]:
        best_clip, best_error = _keep_better(best_clip, best_error, torch.full_like(lo, clip), error)
    coarse_best = best_clip
    for delta in fine:
        candidate = (coarse_best + delta).clamp(CLIP_MIN, 1.0)
        best_clip, best_error = _keep_better(best_clip, best_error, candidate, error)
    return grid_from_range(*_clipped(lo, hi, best_clip, setting), setting, g)


def _keep_better(best_clip, best_error, candidate, error):
    err = error(candidate)
    better = err < best_error  # strict: ties keep the earlier (larger) clip, rtn's at 1.0 first
    return torch.where(better, candidate, best_clip), torch.where(better, err, best_error)


def weighted_error(weight: torch.Tensor, dequantized: torch.Tensor, importance: torch.Tensor | None = None) -> float:
    """Σ_ij w_j (W_ij − Ŵ_ij)²: the objective mse minimises (for tests and benchmarks)."""
    diff = (weight.float() - dequantized.float()).square()
    if importance is not None:
        diff = diff * importance.float()[None, :]
    return float(diff.sum())


@register_quantizer("mse")
def _mse_quantizer(state: CompressionState) -> QuantizedTensor:
    grid = mse_grid(state.weight, state.setting, state.prune_mask, importance_weights(state))
    return quantize(state.weight, state.setting, state.prune_mask, grid)
