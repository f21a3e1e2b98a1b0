"""Rotary position tables read from memory in the evaluator's compiled forward.

A transformers decoder computes its rotary (cos, sin) once per forward from the positions 0..L-1 and
passes them to every layer. Inductor fuses that small computation into each consumer instead of
storing it: every layer's query and key kernels evaluate cos and sin of position × frequency again,
per element (accurate sin/cos with range reduction). On an H200 at 64 × 512 tokens of SmolLM2-135M
those two kernels took 2.4 ms of a 30 ms evaluation (benchmarks/attention_paths.py --profile:
`..._bmm_cat_cos_mul_neg_sin_...`), ~5× what their loads and stores need.

`RotaryTables(model)` computes each rotary module's (cos, sin) for positions 0..L-1 once, eagerly,
and `served(length)` makes the module return slices of that table for the length of a `with`
block, so the compiled graph reads them as inputs (128 kB at L = 512) instead of recomputing them.
The values are the module's own: the table is its output for those positions.

Only for callers that pass no positions of their own (FastForward passes ids alone, so transformers
uses 0..L-1), and only for rotary types whose frequencies do not depend on the sequence length
("default", "linear", "llama3", "yarn": a prefix of a longer table is the shorter one); dynamic and
LongRoPE types, per-layer-type rotaries and multi-dimensional positions keep computing their own.
The table grows to the longest length served (one new table, so the compiled graphs re-trace once);
a table it replaces stays allocated, since a CUDA graph captured over it (stage_graphs.py) reads it at
its address (its rows are the new table's first rows: the graph's values do not change).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def _static_rotary(module: nn.Module) -> bool:
    """A rotary module whose (cos, sin) at a position do not depend on the sequence's length."""
    return (type(module).__name__.endswith("RotaryEmbedding") and isinstance(getattr(module, "inv_freq", None), torch.Tensor)
            and getattr(module, "rope_type", None) in STATIC_ROPE_TYPES)


class _ServedRotary:
    """One rotary module's forward while served: its table's first L rows for positions 0..L-1 (the
    same object across calls, so torch.compile's guards on the module's forward stay valid)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.cos: torch.Tensor | None = None
        self.sin: torch.Tensor | None = None
        self.retired: list[tuple[torch.Tensor, torch.Tensor]] = []  # tables replaced by a longer one
        self.usable = True

    @torch.no_grad()
    def fill(self, length: int, dtype: torch.dtype, device: torch.device) -> None:
        """The table for positions 0..length-1 (kept while one at least as long, of this dtype and
        device, exists)."""
        if not self.usable:
            return
        cos = self.cos
        if cos is not None and cos.shape[-2] >= length and cos.dtype == dtype and cos.device == device:
            return
        positions = torch.arange(length, device=device)[None]
        probe = torch.zeros(1, length, 1, dtype=dtype, device=device)  # the rotary reads its dtype and device
        try:
            out = type(self.module).forward(self.module, probe, position_ids=positions)
        except Exception:  # noqa: BLE001 — a rotary that wants other positions (e.g. multimodal): its own
            out = None
        if (not isinstance(out, tuple) or len(out) != 2 or not all(isinstance(t, torch.Tensor) for t in out)
                or out[0].shape[:2] != (1, length) or out[0].dtype != dtype):
            self.usable = False  # not the (cos, sin) [1, L, dim] this class serves: the module computes its own
            self.cos = self.sin = None
            return
        if self.cos is not None:  # a graph captured over the old table still reads it: keep it alive
            self.retired.append((self.cos, self.sin))
        self.cos, self.sin = out

    def __call__(self, x: torch.Tensor, position_ids: torch.Tensor | None = None, *args, **kwargs):
        cos = self.cos
        if (args or kwargs or cos is None or position_ids is None or position_ids.ndim != 2
                or position_ids.shape[0] != 1 or position_ids.shape[1] > cos.shape[-2] or x.dtype != cos.dtype):
            return type(self.module).forward(self.module, x, position_ids, *args, **kwargs)
        length = position_ids.shape[1]
        return cos[:, :length], self.sin[:, :length]


class RotaryTables:
    """The static rotary modules of a model, each served from a table inside `served(length)`."""

    def __init__(self, model: nn.Module) -> None:
        self.served_modules = [_ServedRotary(module) for module in model.modules() if _static_rotary(module)]
        parameter = next(model.parameters(), None)
        self._dtype = parameter.dtype if parameter is not None else torch.float32  # the activations'

    def __bool__(self) -> bool:
        return any(served.usable for served in self.served_modules)

    @contextmanager
    def served(self, length: int) -> Iterator[None]:
        """Inside the block each static rotary module returns its table's rows 0..length-1 for
        positions 0..length-1, in the dtype of the model's first parameter (its activations')."""
        active = []
        try:
            for served in self.served_modules:
                served.fill(length, self._dtype, served.module.inv_freq.device)
                if served.usable:
                    served.module.forward = served  # an instance attribute over the class's forward
                    active.append(served)
            yield
        finally:
            for served in active:
                served.module.__dict__.pop("forward", None)
