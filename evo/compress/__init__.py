"""Per-tensor compression operators: prune → rescale → quantize, composed through a registry.

`compress_tensor(weight, TensorSetting(...))` is the entry point; evo.compress.size measures the result.
"""

from evo.compress.apply import CompressedTensor, compress_tensor
from evo.compress.prune import ActivationStats, criterion_act_norm, prune_mask, pruned_per_row
from evo.compress.quantize import QuantizedTensor, dequantize, quantize
from evo.compress.registry import (
    CompressionState,
    get_operator,
    pipeline_names,
    register_operator,
    run_pipeline,
)
from evo.compress.grid import QuantGrid, code_max, compute_grid, num_groups, symmetric_midpoint
from evo.compress.settings import TensorSetting

__all__ = [
    "ActivationStats",
    "CompressedTensor",
    "CompressionState",
    "QuantGrid",
    "QuantizedTensor",
    "TensorSetting",
    "code_max",
    "compress_tensor",
    "compute_grid",
    "criterion_act_norm",
    "dequantize",
    "get_operator",
    "num_groups",
    "pipeline_names",
    "prune_mask",
    "pruned_per_row",
    "quantize",
    "register_operator",
    "run_pipeline",
    "symmetric_midpoint",
]
