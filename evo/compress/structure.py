"""Structural drops that keep a transformers model runnable: a whole decoder layer, its attention
block or its MLP block; the residual path stays, so a dropped block adds zero to it.

Only ModelInfo's module paths are used, never architecture names:
- "layer": the layer leaves the ModuleList; the `layer_idx` of every module in the later layers is
  renumbered (KV caches are indexed by it) and `config.num_hidden_layers` / `config.layer_types`
  shrink to match, so a fresh cache and `from_config` see the same stack.
- "attention": the attention module becomes ZeroAttention, which returns (zeros, None) — the
  (output, weights) pair transformers ≥ 4.48 attention modules return and decoder layers unpack.
- "mlp": when the MLP is a sub-module (Llama, Qwen2, ...) it becomes ZeroBlock; when its linears
  sit directly in the layer (OPT's fc1/fc2) each MLP linear becomes ZeroLinear, so the last one
  outputs zeros whatever the activation in between (its bias goes too: the block adds nothing).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

from evo.constants import DROPS
from evo.errors import EvoError
from evo.types import MLP_ROLES, DecoderLayerInfo, ModelInfo



class ZeroAttention(nn.Module):
    """Stands in for a dropped attention block: adds nothing to the residual stream.

    With a KV cache it still records the sequence length for its layer (one head of width 1),
    because generation reads the past length from the cache of layer 0, whichever layer that is.
    """

    def __init__(self, layer_idx: int | None = None) -> None:
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor | None = None, *args, **kwargs):
        if hidden_states is None:
            hidden_states = args[0]
        cache = _cache_argument(kwargs)
        if cache is not None and self.layer_idx is not None and hasattr(cache, "update"):
            placeholder = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
            cache.update(placeholder, placeholder, self.layer_idx)
        return torch.zeros_like(hidden_states), None

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}"


# The name under which decoder layers hand the KV cache to their attention block: `past_key_value`
# (transformers 4.45-4.55), `past_key_values` (4.56-5.23), `cache` (5.24+, the older name
# deprecated). The newest first; a layer passes exactly one of them.
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")


def _cache_argument(kwargs: Mapping[str, object]):
    for name in _CACHE_KWARGS:
        cache = kwargs.get(name)
        if cache is not None:
            return cache
    return None


class ZeroBlock(nn.Module):
    """Stands in for a dropped MLP sub-module: zeros shaped like its input (the hidden size)."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


class ZeroLinear(nn.Module):
    """Stands in for a linear of a dropped MLP whose linears sit in the layer itself."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def _check_drop(drop: str) -> None:
    if drop not in DROPS:
        raise EvoError(f"unknown drop {drop!r}; use one of {list(DROPS)}")


def replaced_modules(layer: DecoderLayerInfo, drop: str) -> tuple[str, ...]:
    """Module paths a drop removes; tensors under them are no longer stored.

    The one place that decides what each drop replaces, used by apply_drop and by the artifact.
    """
    _check_drop(drop)
    if drop == "none":
        return ()
    if drop == "layer":
        return (layer.module,)
    if drop == "attention":
        if layer.attention_module is None:
            raise EvoError(
                f"layer {layer.index} has no separate attention block to drop: drop the whole layer instead"
            )
        return (layer.attention_module,)
    if layer.mlp_module is not None:
        return (layer.mlp_module,)
    mlp_linears = tuple(lin.module for lin in layer.linears if lin.role in MLP_ROLES)
    if not mlp_linears:
        raise EvoError(f"layer {layer.index} has no MLP linears to drop")
    return mlp_linears


def is_replaced(tensor_name: str, modules: Iterable[str]) -> bool:
    """True when the tensor belongs to one of the module paths."""
    return any(tensor_name.startswith(module + ".") for module in modules)


def apply_block_drop(model: nn.Module, layer: DecoderLayerInfo, drop: str) -> None:
    """Replace the attention or MLP block of one layer ("none" does nothing, "layer" is refused:
    removing layers shifts indices, so it goes through drop_layers)."""
    if drop == "layer":
        raise EvoError("apply_block_drop drops a block; use drop_layers to remove whole layers")
    for path in replaced_modules(layer, drop):
        old = model.get_submodule(path)
        if drop == "attention":
            new: nn.Module = ZeroAttention(getattr(old, "layer_idx", None))
        elif isinstance(old, nn.Linear):
            new = ZeroLinear(old.in_features, old.out_features)
        else:
            new = ZeroBlock()
        model.set_submodule(path, new)


def drop_layers(model: nn.Module, info: ModelInfo, indices: Iterable[int]) -> tuple[int, ...]:
    """Remove decoder layers by their index in `info`; returns the original indices kept, in order."""
    layers = model.get_submodule(info.layers_path)
    if not isinstance(layers, nn.ModuleList) or len(layers) != info.num_layers:
        raise EvoError(
            f"the model's {info.layers_path} no longer matches its description ({info.num_layers} layers): "
            "were layers dropped already? reload the model"
        )
    drop = sorted(set(indices))
    for index in drop:
        if not 0 <= index < info.num_layers:
            raise EvoError(f"cannot drop layer {index}: the model has layers 0..{info.num_layers - 1}")
    if len(drop) == info.num_layers:
        raise EvoError(f"cannot drop all {info.num_layers} decoder layers: keep at least one")
    kept = tuple(i for i in range(info.num_layers) if i not in set(drop))
    for index in reversed(drop):
        del layers[index]
    for new_index, layer in enumerate(layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    config = getattr(model, "config", None)
    if config is not None:
        shrink_config(config, kept, info.num_layers)
    return kept


def shrink_config(config, kept: tuple[int, ...], original_layers: int) -> None:
    if getattr(config, "num_hidden_layers", None) is not None:
        config.num_hidden_layers = len(kept)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, (list, tuple)) and len(layer_types) == original_layers:
        config.layer_types = [layer_types[i] for i in kept]


def apply_drops(model: nn.Module, info: ModelInfo, drops: Mapping[int, str]) -> tuple[int, ...]:
    """Apply {layer index: drop} to the model in place (indices of `info`); returns the original
    indices of the layers kept. Blocks go first, while `info`'s paths still hold."""
    for index, drop in drops.items():
        _check_drop(drop)
        if not 0 <= index < info.num_layers:
            raise EvoError(f"cannot drop in layer {index}: the model has layers 0..{info.num_layers - 1}")
    for index, drop in sorted(drops.items()):
        if drop in ("attention", "mlp"):
            apply_block_drop(model, info.layers[index], drop)
    removed = [index for index, drop in drops.items() if drop == "layer"]
    if not removed:
        return tuple(range(info.num_layers))
    return drop_layers(model, info, removed)
