"""Compress one weight matrix by running the registered operators (prune → rescale → quantize).

The result carries what is stored (QuantizedTensor) and gives back the weight the model runs with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evo.compress.prune import ActivationStats
from evo.compress.quantize import QuantizedTensor, dequantize
from evo.compress.registry import CompressionState, run_pipeline
from evo.compress.settings import TensorSetting
from evo.errors import EvoError


@dataclass(frozen=True)
class CompressedTensor:
    """A compressed matrix: the stored form, and the prune mask that produced it (None if unpruned)."""

    quantized: QuantizedTensor
    prune_mask: torch.Tensor | None

    @property
    def setting(self) -> TensorSetting:
        return self.quantized.setting

    def dequantized(self) -> torch.Tensor:
        """The float32 weight the compressed model runs with."""
        return dequantize(self.quantized)


def compress_tensor(
    weight: torch.Tensor,
    setting: TensorSetting,
    act_stats: ActivationStats | None = None,
    hessian: torch.Tensor | None = None,
) -> CompressedTensor:
    """Run the compression pipeline on `weight` [out, in]; act_stats feeds wanda/linf pruning and
    mse's importance weights, hessian (E[x xᵀ] of the input, [in, in]) feeds gptq."""
    if not isinstance(setting, TensorSetting):
        raise EvoError(f"setting must be a TensorSetting, got {type(setting).__name__}")
    if act_stats is not None and weight.ndim == 2 and act_stats.l2.shape[0] != weight.shape[1]:
        raise EvoError(
            f"activation statistics cover {act_stats.l2.shape[0]} input channels, "
            f"the weight has {weight.shape[1]}"
        )
    if hessian is not None and weight.ndim == 2 and tuple(hessian.shape) != (weight.shape[1],) * 2:
        raise EvoError(f"the Hessian has shape {tuple(hessian.shape)}, the weight {tuple(weight.shape)}: "
                       "it must be [in, in] of this weight's input")
    state = run_pipeline(CompressionState(weight=weight, setting=setting, act_stats=act_stats, hessian=hessian))
    if state.quantized is None:
        raise RuntimeError("the compression pipeline ended without a quantized tensor")
    return CompressedTensor(quantized=state.quantized, prune_mask=state.prune_mask)
