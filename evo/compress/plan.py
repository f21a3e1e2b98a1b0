"""What a CompressionConfig stores for a model, from its description alone: every tensor with its
name before and after layer drops, its shape and setting, and the layers kept; and the activation
statistics each setting needs. compress_model, the size model and the evaluator all plan here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from evo.compress.config import CompressionConfig
from evo.compress.prune import ActivationStats, needs_stats
from evo.compress.settings import TensorSetting
from evo.compress.structure import is_replaced, replaced_modules
from evo.errors import EvoError
from evo.types import ModelInfo


@dataclass(frozen=True)
class TensorPlan:
    """One tensor the compressed model stores.

    source: its name in the base model (what configs, statistics and size keys use);
    name: its name in the compressed model, which differs once earlier layers are dropped.
    """

    name: str
    source: str
    shape: tuple[int, ...]
    setting: TensorSetting

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@dataclass(frozen=True)
class ModelPlan:
    """Every stored tensor, and the base-model indices of the decoder layers that remain."""

    tensors: tuple[TensorPlan, ...]
    kept_layers: tuple[int, ...]


def plan_model(info: ModelInfo, config: CompressionConfig) -> ModelPlan:
    """What a config stores, from the model's description alone (no weights needed).

    Tensors of dropped layers and blocks are left out; a tied head is the embedding, stored once.
    """
    config.validate_against(info)
    drops = config.drops
    kept = tuple(layer.index for layer in info.layers if drops.get(layer.index) != "layer")
    new_index = {old: new for new, old in enumerate(kept)}
    tensors = []
    for layer in info.layers:
        drop = drops.get(layer.index, "none")
        if drop == "layer":
            continue
        removed = replaced_modules(layer, drop)
        old_prefix = f"{layer.module}."
        new_prefix = f"{info.layers_path}.{new_index[layer.index]}."
        names = [(lin.name, tuple(lin.shape)) for lin in layer.linears] + list(layer.other_tensors)
        for source, shape in names:
            if is_replaced(source, removed):
                continue
            if not source.startswith(old_prefix):
                raise EvoError(f"tensor {source} of layer {layer.index} is not under {layer.module}")
            tensors.append(
                TensorPlan(
                    name=new_prefix + source[len(old_prefix) :],
                    source=source,
                    shape=tuple(shape),
                    setting=config.setting_for(source, info),
                )
            )
    for tensor in info.non_decoder:
        tensors.append(
            TensorPlan(tensor.name, tensor.name, tuple(tensor.shape), config.setting_for(tensor.name, info))
        )
    return ModelPlan(tensors=tuple(tensors), kept_layers=kept)


def size_model_id(info: ModelInfo, dtype: torch.dtype, device: str | torch.device = "cpu") -> str:
    """The model id for size keys: the same checkpoint in bf16 and fp32 rounds to other codes, and
    the codes computed on another device kind (cuda vs cpu) may round otherwise too (its kernels'
    float arithmetic differs in the last bit), so a non-CPU device's kind is part of the id."""
    kind = torch.device(device).type
    return f"{info.model_id}|{str(dtype).removeprefix('torch.')}" + ("" if kind == "cpu" else f"|{kind}")


# Appended to the size keys' model id when fast-decoding coders are preferred: other frames, other sizes.
DECODE_SPEED_TAG = "|fast-decode"


def needs_stats_for(setting: TensorSetting) -> bool:
    """Activation statistics are needed by wanda/linf pruning and read by mse (its E[x²] weights)."""
    return setting.quantized and (setting.quantizer == "mse" or needs_stats(setting))


def needs_hessian_for(setting: TensorSetting) -> bool:
    """The Hessians of the linear inputs are needed by the gptq quantizer."""
    return setting.quantized and setting.quantizer == "gptq"


def stats_for(
    stats: Mapping[str, ActivationStats] | None, source: str, setting: TensorSetting
) -> ActivationStats | None:
    """The activation statistics a tensor's setting reads (None when it reads none): pruning by
    wanda/linf needs them; mse reads them where they exist (decoder linears; other tensors weigh
    every column 1). An EvoError when they are needed and not given. The one rule for
    compress_model, the size model and the evaluator."""
    if not needs_stats_for(setting):
        return None
    act = (stats or {}).get(source)
    pruning = needs_stats(setting)
    if act is None and (pruning or stats is None):
        what = f"is pruned with {setting.prune_criterion!r}" if pruning else "uses quantizer 'mse'"
        raise EvoError(
            f"tensor {source} {what}, which needs activation statistics: pass stats=collect_activation_stats(...)"
            + (" or use prune_criterion='magnitude'" if pruning else " (evo compress collects them)")
        )
    return act


def hessian_for(hessians, source: str, setting: TensorSetting) -> torch.Tensor | None:
    """E[x xᵀ] of the tensor's input from `hessians` (an evo.evaluate.hessian.HessianSet, or
    anything with .hessian(name) and .digest) when its setting is gptq, else None; an EvoError
    when gptq needs them and none are given."""
    if not needs_hessian_for(setting):
        return None
    if hessians is None:
        raise EvoError(f"tensor {source} uses quantizer 'gptq', which needs the Hessians of the linear inputs: "
                       "pass hessians=collect_hessians(...) (evo compress collects them)")
    return hessians.hessian(source)


def config_needs_stats(config: CompressionConfig, info: ModelInfo) -> bool:
    """Whether any stored tensor is pruned by an activation-aware criterion (wanda, linf) or
    quantized by mse (weighted by E[x²])."""
    return any(needs_stats_for(t.setting) for t in plan_model(info, config).tensors)


def config_needs_hessians(config: CompressionConfig, info: ModelInfo) -> bool:
    """Whether any stored tensor is quantized by gptq."""
    return any(needs_hessian_for(t.setting) for t in plan_model(info, config).tensors)
