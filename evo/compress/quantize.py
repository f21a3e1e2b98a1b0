"""Round-to-nearest quantization of one weight matrix to uint8 codes on a per-group grid, and back.

Scales and zero points are fp16 and both directions use the stored values, so the error is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from evo.compress.registry import CompressionState, discover, register_operator
from evo.compress.grid import QuantGrid, column_group, compute_grid, num_groups, symmetric_midpoint
from evo.compress.settings import QUANTIZERS, TensorSetting
from evo.errors import EvoError


@dataclass(frozen=True)
class QuantizedTensor:
    """One matrix as stored: what evo.compress.size encodes and evo.compress.dequantize reads.

    codes: uint8 [out, in] in [0, 2^b - 1] (symmetric: offset by 2^(b-1) - 1 so 0.0 is the
        middle code); for bits=16 the bf16 matrix itself.
    scales: fp16 [out, groups], the (rescaled) step; None for bits=16.
    zeros: uint8 [out, groups] integer zero points, fp16 [out, groups] group minimums
        (zero_point="float"), or None (symmetric or bits=16).
    """

    codes: torch.Tensor
    scales: torch.Tensor | None
    zeros: torch.Tensor | None
    shape: tuple[int, ...]
    setting: TensorSetting

    def __post_init__(self) -> None:
        if tuple(self.codes.shape) != tuple(self.shape):
            raise EvoError(f"codes have shape {tuple(self.codes.shape)}, expected {tuple(self.shape)}")
        if not self.setting.quantized:
            if self.codes.dtype != torch.bfloat16 or self.scales is not None or self.zeros is not None:
                raise EvoError("a bits=16 QuantizedTensor holds a bf16 matrix and no scales or zeros")
            return
        if self.codes.dtype != torch.uint8:
            raise EvoError(f"codes must be uint8, got {self.codes.dtype}")
        groups = (self.shape[0], num_groups(self.shape[1], self.setting.group_size))
        if self.scales is None or tuple(self.scales.shape) != groups or self.scales.dtype != torch.float16:
            raise EvoError(f"scales must be fp16 of shape {groups}")
        expected_zero = None
        if not self.setting.symmetric:
            expected_zero = torch.uint8 if self.setting.zero_point == "int" else torch.float16
        if (self.zeros is None) != (expected_zero is None) or (
            self.zeros is not None and (self.zeros.dtype != expected_zero or tuple(self.zeros.shape) != groups)
        ):
            raise EvoError(f"zeros must be {expected_zero} of shape {groups} for setting {self.setting.key()}")

    @property
    def num_weights(self) -> int:
        return int(self.codes.numel())


def quantize(
    weight: torch.Tensor,
    setting: TensorSetting,
    prune_mask: torch.Tensor | None = None,
    grid: QuantGrid | None = None,
) -> QuantizedTensor:
    """Quantize `weight` [out, in] with `setting`; weights where prune_mask is True become exactly 0.

    `grid` defaults to compute_grid(weight, setting, prune_mask) (see evo.compress.rescale).
    """
    shape = tuple(weight.shape)
    if not setting.quantized:
        if prune_mask is not None:
            raise EvoError("bits=16 keeps the matrix as is; pruning needs bits < 16")
        return QuantizedTensor(weight.detach().to(torch.bfloat16).contiguous(), None, None, shape, setting)
    if prune_mask is not None:
        if setting.zero_point == "float":
            raise EvoError('pruned weights need zero_point="int" (a float zero point cannot represent 0 exactly)')
        if prune_mask.shape != weight.shape or prune_mask.dtype != torch.bool:
            raise EvoError(f"prune_mask must be a bool tensor of shape {shape}")
    if grid is None:
        grid = compute_grid(weight, setting, prune_mask)
    w = weight.detach().to(torch.float32)
    columns = column_group(shape[1], setting.group_size, device=w.device)
    step = grid.scales.float().index_select(1, columns)
    if setting.symmetric:
        mid = symmetric_midpoint(setting.bits)
        codes = torch.round(w / step).clamp(-mid, mid) + mid
        zero_code: torch.Tensor | int = mid
    elif setting.zero_point == "int":
        zero_code = grid.zeros.float().index_select(1, columns)
        codes = (torch.round(w / step) + zero_code).clamp(0, grid.code_max)
    else:
        codes = torch.round((w - grid.zeros.float().index_select(1, columns)) / step).clamp(0, grid.code_max)
    if prune_mask is not None:
        codes = torch.where(prune_mask, zero_code, codes)
    return QuantizedTensor(codes.to(torch.uint8), grid.scales, grid.zeros, shape, setting)


def dequantize(q: QuantizedTensor) -> torch.Tensor:
    """The float32 matrix the model runs with: code*step (+ offset) from the stored fp16 values."""
    setting = q.setting
    if not setting.quantized:
        return q.codes.to(torch.float32)
    columns = column_group(q.shape[1], setting.group_size, device=q.codes.device)
    step = q.scales.float().index_select(1, columns)
    codes = q.codes.float()
    if setting.symmetric:
        return (codes - symmetric_midpoint(setting.bits)) * step
    if setting.zero_point == "int":
        return (codes - q.zeros.float().index_select(1, columns)) * step
    return codes * step + q.zeros.float().index_select(1, columns)


# A quantizer turns the pipeline's state (weight, setting, prune mask, statistics) into codes on
# the setting's grid; TensorSetting.quantizer names it. rtn is below, mse and gptq in their modules
# (any module of evo.compress with a @register_quantizer is found, see registry.discover).
Quantizer = Callable[[CompressionState], QuantizedTensor]
_QUANTIZERS: dict[str, Quantizer] = {}


def register_quantizer(name: str) -> Callable[[Quantizer], Quantizer]:
    """Register a quantizer under a name of settings.QUANTIZERS."""

    def decorate(quantizer: Quantizer) -> Quantizer:
        if name not in QUANTIZERS:
            raise ValueError(f"quantizer {name!r} is not in settings.QUANTIZERS {QUANTIZERS}")
        if name in _QUANTIZERS:
            raise ValueError(f"quantizer {name!r} is registered twice")
        _QUANTIZERS[name] = quantizer
        return quantizer

    return decorate


def get_quantizer(name: str) -> Quantizer:
    discover()  # the quantizer modules register themselves on import, like operators
    try:
        return _QUANTIZERS[name]
    except KeyError:
        raise EvoError(f"quantizer {name!r} is not available; use one of {sorted(_QUANTIZERS)}") from None


@register_quantizer("rtn")
def _rtn_quantizer(state: CompressionState) -> QuantizedTensor:
    return quantize(state.weight, state.setting, state.prune_mask, state.grid)


@register_operator("quantize", order=30)
def _quantize_operator(state: CompressionState) -> CompressionState:
    if not state.setting.quantized:  # bits=16: kept as is, whatever the quantizer
        return replace(state, quantized=quantize(state.weight, state.setting, state.prune_mask))
    return replace(state, quantized=get_quantizer(state.setting.quantizer)(state))
