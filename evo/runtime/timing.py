"""One forward pass of a model whose weights a DecodedWeights store decodes on use, timed in parts
within that same pass: the whole pass, the time inside decoding and inside dequantization, and so
the compute left without both (what "auto" plans with); and each weight's decode time at first use.

Every part is measured around the calls the pass itself makes (on CUDA with the device synchronized
on both sides, since kernels are queued, not done, when a call returns), so the parts are disjoint
intervals of the pass and the compute is their difference, never a difference of figures measured
at another time (under load those can exceed the pass and leave nothing)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from evo.runtime.modules import PackedWeight
from evo.runtime.store import DecodedWeights

# PackedWeight's dequantizations a forward may call (the "codes" kernel, embedding rows, whole matrix).
DEQUANTIZE_METHODS = ("dequantize_scratch", "dequantize_rows", "dequantize")


@dataclass(frozen=True)
class PassTiming:
    """Seconds of one single-token forward pass and of its parts."""

    wall_seconds: float
    decode_seconds: float  # inside the store's decode in the pass (a tied weight used twice decodes twice)
    dequantize_seconds: float  # inside PackedWeight dequantization in the pass
    first_use: dict[str, float]  # key → its first decode (in the pass, or after it for a weight the pass skipped)

    @property
    def compute_seconds(self) -> float:
        """The pass without its decoding and dequantization."""
        return max(self.wall_seconds - self.decode_seconds - self.dequantize_seconds, 0.0)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    """Accumulates the seconds spent inside the calls it wraps."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0

    def call(self, function: Callable, *args):
        _synchronize(self.device)
        start = time.perf_counter()
        result = function(*args)
        _synchronize(self.device)
        elapsed = time.perf_counter() - start
        self.seconds += elapsed
        return result, elapsed


def _time_dequantization(weight: PackedWeight, clock: _Clock) -> None:
    """Shadow the weight's dequantize methods by timed ones (this instance only; the store drops it
    after the pass, since it caches nothing while measured)."""
    for name in DEQUANTIZE_METHODS:
        method = getattr(weight, name)
        object.__setattr__(weight, name, lambda *args, _method=method: clock.call(_method, *args)[0])


@torch.no_grad()
def measure_pass(model: nn.Module, store: DecodedWeights) -> PassTiming:
    """Time one single-token forward pass of `model`, whose lazily decoded weights `store` holds,
    then decode every weight the pass did not use once (for its first-use time). The store must
    neither cache nor prefetch (capacity 0, prefetch 0): every decode then runs in the pass, on
    this thread, and is timed there."""
    if store.prefetch or store.capacity_bytes != 0:
        raise ValueError("measure_pass needs a store that neither caches nor prefetches (capacity 0, prefetch 0)")
    device = next(model.parameters()).device
    decoding, dequantizing = _Clock(device), _Clock(device)
    first_use: dict[str, float] = {}
    decode = store.decode

    def timed(key: str):
        weight, elapsed = decoding.call(decode, key)
        first_use.setdefault(key, elapsed)
        if isinstance(weight, PackedWeight):
            _time_dequantization(weight, dequantizing)
        return weight

    store.decode = timed  # type: ignore[method-assign]
    try:
        _synchronize(device)
        start = time.perf_counter()
        model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device), use_cache=False)
        _synchronize(device)
        wall = time.perf_counter() - start
        in_pass = (decoding.seconds, dequantizing.seconds)
        for key in store.coded:  # a weight the pass did not use is still timed
            if key not in first_use:
                timed(key)
    finally:
        del store.decode
    return PassTiming(wall, in_pass[0], in_pass[1], first_use)
