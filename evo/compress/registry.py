"""Compression operators registered by name and run in pipeline order on one tensor.

An operator reads a CompressionState and returns an updated copy; a new one is a decorated function
in any module of evo.compress (the package's modules are imported once, before the first pipeline
runs, so each registers itself: no list of operators to extend).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

import torch

from evo.compress.grid import QuantGrid
from evo.compress.settings import TensorSetting
from evo.errors import EvoError


@dataclass(frozen=True)
class CompressionState:
    """What the pipeline knows about one weight matrix so far; each operator fills a field.

    ActivationStats (evo.compress.prune) and QuantizedTensor (evo.compress.quantize) are named, not
    imported: those modules are operators that import this registry.
    """

    weight: torch.Tensor
    setting: TensorSetting
    act_stats: ActivationStats | None = None
    hessian: torch.Tensor | None = None  # E[x xᵀ] of the input [in, in], for gptq (and mse's weights)
    prune_mask: torch.Tensor | None = None
    grid: QuantGrid | None = None
    quantized: QuantizedTensor | None = None


Operator = Callable[[CompressionState], CompressionState]


@dataclass(frozen=True)
class _Entry:
    order: int
    operator: Operator


_OPERATORS: dict[str, _Entry] = {}
_discovered = False


def register_operator(name: str, order: int) -> Callable[[Operator], Operator]:
    """Register `operator` under `name`; the pipeline runs operators by ascending `order`."""

    def decorate(operator: Operator) -> Operator:
        if name in _OPERATORS:
            raise ValueError(f"compression operator {name!r} is registered twice")
        _OPERATORS[name] = _Entry(order, operator)
        return operator

    return decorate


def discover() -> None:
    """Import every module of evo.compress once: operators register themselves on import."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = __name__.rpartition(".")[0]
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(f"{package}.{module.name}")


def get_operator(name: str) -> Operator:
    discover()
    try:
        return _OPERATORS[name].operator
    except KeyError:
        raise EvoError(f"unknown compression operator {name!r}; known: {pipeline_names()}") from None


def pipeline_names() -> tuple[str, ...]:
    """Registered operator names in the order the pipeline runs them."""
    discover()
    return tuple(sorted(_OPERATORS, key=lambda name: (_OPERATORS[name].order, name)))


def run_pipeline(state: CompressionState) -> CompressionState:
    for name in pipeline_names():
        state = _OPERATORS[name].operator(state)
    return state
