"""The round-to-nearest (RTN) grid of each weight group, with compression-aware rescaling of its step.

rescale r multiplies the RTN step: r > 1 uses fewer codes (lower entropy), r < 1 clips outliers.

Definitions (b = bits, groups run along the input dimension, see `group_view`):

asymmetric, integer zero point (zero_point="int"), codes c in [0, 2^b - 1]:
    lo = min(min w, 0), hi = max(max w, 0)       # 0 kept inside so pruned weights stay exact
    step = fp16_up(r * (hi - lo) / (2^b - 1))
    z = clamp(round((2^b - 1)/2 - (hi + lo)/2 / step), 0, 2^b - 1)   # stored as uint8
    w ≈ (c - z) * step
  The grid is centred on the group's mid-range, so r > 1 widens it symmetrically around the
  middle code and r < 1 clips both tails equally. At r = 1 this is the usual min/max RTN.

asymmetric, float zero point (zero_point="float", like GGUF Q4_1), codes c in [0, 2^b - 1]:
    m = fp16_down(mid - r * (hi - lo)/2), with lo, hi the group's own min and max
    step = fp16_up((mid + r * (hi - lo)/2 - m) / (2^b - 1))
    w ≈ c * step + m                               # m stored in fp16
  Rounding m down and step up keeps [lo, hi] inside the grid at r = 1 despite fp16 storage.

symmetric (restricted range), signed codes s in [-(2^(b-1) - 1), 2^(b-1) - 1]:
    step = fp16_up(r * max|w| / (2^(b-1) - 1))
    c = s + (2^(b-1) - 1)                          # unsigned; the middle code means 0.0
    w ≈ (c - (2^(b-1) - 1)) * step
  The restricted range (2^b - 1 levels; code 2^b - 1 is never used) keeps the grid symmetric,
  so w and -w quantize to opposite values and max|w| is never clipped at r = 1. At 2 bits the
  grid is ternary {-step, 0, step}. The unused code costs nothing after entropy coding.

In all three, step is the value stored (fp16) and quantization divides by that stored value,
so dequantization error is at most step/2 for any weight inside the clip range
[value(code 0) - step/2, value(code max) + step/2]; weights beyond it are clamped to the
extreme code. A group whose range is zero gets step = 1 (any positive value reproduces it).
fp16_up/fp16_down round to the nearest fp16 at or above/below the float32 value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from evo.compress.settings import TensorSetting
from evo.errors import EvoError


@dataclass(frozen=True)
class QuantGrid:
    """Per-group grid of one matrix: scales fp16 [out, G]; zeros uint8 (int) or fp16 (float) or None."""

    scales: torch.Tensor
    zeros: torch.Tensor | None
    group_size: int
    code_max: int


def effective_group_size(in_features: int, group_size: int | None) -> int:
    """Columns per group; None (per output channel) means the whole row."""
    return in_features if group_size is None else min(group_size, in_features)


def num_groups(in_features: int, group_size: int | None) -> int:
    """ceil(in / group_size): the last group is ragged when in is not a multiple.

    SmolLM2's hidden size 576 = 4 * 128 + 64, so at group_size=128 a row has five groups and
    the last one holds 64 columns; it gets its own scale like any other group.
    """
    return math.ceil(in_features / effective_group_size(in_features, group_size))


def column_group(in_features: int, group_size: int | None, device: torch.device | None = None) -> torch.Tensor:
    """Group index of every input column, shape [in]."""
    g = effective_group_size(in_features, group_size)
    return torch.arange(in_features, device=device) // g


def group_view(weight: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """[out, in] -> [out, G, g]; a ragged last group is padded by repeating its last column,
    which changes neither its min, max nor max|w|."""
    out_features, in_features = weight.shape
    g = effective_group_size(in_features, group_size)
    groups = num_groups(in_features, group_size)
    pad = groups * g - in_features
    if pad:
        weight = torch.cat([weight, weight[:, -1:].expand(out_features, pad)], dim=1)
    return weight.reshape(out_features, groups, g)


def symmetric_midpoint(bits: int) -> int:
    """The unsigned code of 0.0 on the symmetric grid: 2^(b-1) - 1."""
    return (1 << (bits - 1)) - 1


def code_max(setting: TensorSetting) -> int:
    """Largest code the grid uses: 2^b - 1 (asymmetric) or 2^b - 2 (restricted symmetric)."""
    return 2 * symmetric_midpoint(setting.bits) if setting.symmetric else (1 << setting.bits) - 1


def _fp16_round(x: torch.Tensor, direction: float) -> torch.Tensor:
    half = x.to(torch.float16)
    wrong_side = half.float() < x if direction > 0 else half.float() > x
    stepped = torch.nextafter(half, torch.full_like(half, direction))
    half = torch.where(wrong_side, stepped, half)
    if not bool(torch.isfinite(half).all()):
        raise EvoError("weights are too large for fp16 scales (|w| > 65504 * step); this matrix cannot be quantized")
    return half


def fp16_up(x: torch.Tensor) -> torch.Tensor:
    return _fp16_round(x, math.inf)


def fp16_down(x: torch.Tensor) -> torch.Tensor:
    return _fp16_round(x, -math.inf)


def _divide(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """x / divisor rounded once, on every device: CUDA divides a tensor by a Python number as
    x * (1 / divisor), one bit off now and then, and a step just above an fp16 value then rounds up
    to the next one (other codes on a GPU than on a CPU). A tensor divisor on x's device is divided by."""
    return x / torch.full((), divisor, dtype=x.dtype, device=x.device)


def _nonzero_step(step: torch.Tensor) -> torch.Tensor:
    return torch.where(step == 0, torch.ones_like(step), step)


def compute_grid(weight: torch.Tensor, setting: TensorSetting, prune_mask: torch.Tensor | None = None) -> QuantGrid:
    """The rescaled RTN grid for each group of `weight` [out, in] (pruned weights count as 0)."""
    groups = masked_groups(weight, setting, prune_mask)
    lo, hi = group_range(groups, setting)
    return grid_from_range(lo, hi, setting, effective_group_size(weight.shape[1], setting.group_size))


def masked_groups(weight: torch.Tensor, setting: TensorSetting, prune_mask: torch.Tensor | None = None) -> torch.Tensor:
    """`weight` [out, in] checked, in float32, pruned weights set to 0, as groups [out, G, g]."""
    if not setting.quantized:
        raise EvoError("compute_grid needs bits < 16; bits=16 keeps the matrix in bf16")
    if weight.ndim != 2:
        raise EvoError(f"quantization needs a 2-D weight [out, in], got shape {tuple(weight.shape)}")
    w = weight.detach().to(torch.float32)
    if not bool(torch.isfinite(w).all()):
        raise EvoError("weight contains NaN or inf; cannot quantize it")
    if prune_mask is not None:
        w = w.masked_fill(prune_mask, 0.0)
    return group_view(w, setting.group_size)


def group_range(groups: torch.Tensor, setting: TensorSetting) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) [out, G] that the grid covers at rescale 1: (-max|w|, max|w|) when symmetric,
    the group's min and max with 0 inside for an integer zero point, its own min and max else."""
    if setting.symmetric:
        amax = groups.abs().amax(dim=-1)
        return -amax, amax
    lo = groups.amin(dim=-1)
    hi = groups.amax(dim=-1)
    if setting.zero_point == "int":
        return lo.clamp(max=0.0), hi.clamp(min=0.0)
    return lo, hi


def grid_from_range(lo: torch.Tensor, hi: torch.Tensor, setting: TensorSetting, group_size: int) -> QuantGrid:
    """The grid of the module docstring for a range [lo, hi] per group, with setting.rescale
    applied to its step (symmetric grids read hi as max|w|)."""
    r = setting.rescale
    top = code_max(setting)
    if setting.symmetric:
        step = _nonzero_step(fp16_up(_divide(r * hi, symmetric_midpoint(setting.bits))))
        return QuantGrid(scales=step, zeros=None, group_size=group_size, code_max=top)
    if setting.zero_point == "int":
        step = _nonzero_step(fp16_up(_divide(r * (hi - lo), top)))
        mid = (hi + lo) / 2
        zero = torch.round(top / 2 - mid / step.float()).clamp(0, top).to(torch.uint8)
        return QuantGrid(scales=step, zeros=zero, group_size=group_size, code_max=top)
    mid = (hi + lo) / 2
    half_range = r * (hi - lo) / 2
    minimum = fp16_down(mid - half_range)
    step = _nonzero_step(fp16_up(_divide(mid + half_range - minimum.float(), top)))
    return QuantGrid(scales=step, zeros=minimum, group_size=group_size, code_max=top)
