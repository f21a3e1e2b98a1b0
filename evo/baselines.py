"""The configurations evo's search is measured against: uniform round-to-nearest at one bit-width,
and ShortGPT layer removal (drop the layers whose output is most like their input).

ShortGPT (Men et al., 2024) scores layer i by its Block Influence BI_i = 1 - E_t[cos(h_i,t, h_i+1,t)]
over calibration tokens t, h_i the hidden state entering layer i, and removes the k lowest.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from evo.compress.settings import KEPT_BITS, TensorSetting
from evo.compress.config import KEPT, CompressionConfig, LayerConfig
from evo.errors import EvoError
from evo.evaluate.forward import Hook, check_batch_size, run_forward, token_batch
from evo.types import ModelInfo


def uniform_config(
    bits: int, group_size: int | None = 128, embedding_bits: int = 8, quantizer: str = "rtn"
) -> CompressionConfig:
    """Every decoder linear at `bits` (asymmetric, integer zero point, `group_size` inputs per
    scale, codes chosen by `quantizer`), the token embedding (and a tied head) at `embedding_bits`
    with the same grouping and rtn (it has no single input whose Hessian gptq could use); an
    untied head and everything else kept in bf16. bits=16 keeps the linears in bf16."""
    linear = KEPT if bits == KEPT_BITS else TensorSetting(bits=bits, group_size=group_size, quantizer=quantizer)
    embedding = KEPT if embedding_bits == KEPT_BITS else TensorSetting(bits=embedding_bits, group_size=group_size)
    return CompressionConfig(default=linear, embedding=embedding)


def block_influence(model: nn.Module, info: ModelInfo, token_ids, *, batch_size: int = 4) -> np.ndarray:
    """ShortGPT's Block Influence of every decoder layer, float64 [num_layers]: 1 minus the mean,
    over all positions of `token_ids` [n, L] (no padding), of the cosine similarity between the
    hidden state a layer receives and the one it returns. ~0 for a layer that changes nothing."""
    ids = token_batch(token_ids)
    check_batch_size(batch_size)
    layers = model.get_submodule(info.layers_path)
    if len(layers) != info.num_layers:
        raise EvoError(f"the model has {len(layers)} decoder layers but its description {info.num_layers}: "
                       "pass the uncompressed model it was described from")
    device = next(model.parameters()).device
    # float64 sums: tens of thousands of positions per layer
    sums = torch.zeros(info.num_layers, dtype=torch.float64, device=device)

    def hook(index: int):
        def record(module, args, kwargs, output):
            hidden_in = args[0] if args else kwargs["hidden_states"]
            hidden_out = output[0] if isinstance(output, (tuple, list)) else output
            cos = torch.nn.functional.cosine_similarity(hidden_in.float(), hidden_out.float(), dim=-1)
            sums[index] += cos.double().sum()

        return record

    run_forward(model, ids, batch_size,
                hooks=[Hook(layer, hook(i), with_kwargs=True) for i, layer in enumerate(layers)])
    return 1.0 - (sums / ids.numel()).cpu().numpy()


def shortgpt_config(influence, k: int) -> CompressionConfig:
    """Drop the k layers of lowest influence (ties: the lower index first); every tensor left is
    kept in bf16."""
    influence = np.asarray(influence, dtype=np.float64)
    if influence.ndim != 1 or influence.size == 0 or not np.all(np.isfinite(influence)):
        raise EvoError("influence must be one finite value per decoder layer (see block_influence)")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < influence.size:
        raise EvoError(f"k={k!r} layers cannot be dropped from {influence.size}: use 0 ≤ k < {influence.size}")
    dropped = np.argsort(influence, kind="stable")[:k]
    return CompressionConfig(default=KEPT, embedding=KEPT,
                             layers={int(i): LayerConfig(drop="layer") for i in dropped})
