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


def size_model_id(info: ModelInfo, dtype: torch.dtype) -> str:
    """The model id for size keys: the same checkpoint in bf16 and fp32 rounds to other codes."""
    return f"{info.model_id}|{str(dtype).removeprefix('torch.')}"


# Appended to the size keys' model id when fast-decoding coders are preferred: other frames, other sizes.
DECODE_SPEED_TAG = "|fast-decode"


def stats_for(
    stats: Mapping[str, ActivationStats] | None, source: str, setting: TensorSetting
) -> ActivationStats | None:
    """The activation statistics a tensor's setting needs (None when it needs none); an EvoError
    when it needs them and they are missing. The one rule for compress_model, the size model and
    the evaluator."""
    if not needs_stats(setting):
        return None
    act = (stats or {}).get(source)
    if act is None:
        raise EvoError(
            f"tensor {source} is pruned with {setting.prune_criterion!r}, which needs activation "
            "statistics: pass stats=collect_activation_stats(...) or use prune_criterion='magnitude'"
        )
    return act


def config_needs_stats(config: CompressionConfig, info: ModelInfo) -> bool:
    """Whether any stored tensor is pruned by an activation-aware criterion (wanda, linf)."""
    return any(needs_stats(t.setting) for t in plan_model(info, config).tensors)
