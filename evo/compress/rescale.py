"""The rescale operator: the RTN grid of every group, its step multiplied by the setting's rescale
factor (r > 1: fewer codes, lower entropy; r < 1: outliers clipped). The grid itself is evo.compress.grid.
"""

from __future__ import annotations

from dataclasses import replace

from evo.compress.grid import compute_grid
from evo.compress.registry import CompressionState, register_operator


@register_operator("rescale", order=20)
def _rescale_operator(state: CompressionState) -> CompressionState:
    if not state.setting.quantized:
        return state
    return replace(state, grid=compute_grid(state.weight, state.setting, state.prune_mask))
