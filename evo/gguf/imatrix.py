"""The importance matrix llama.cpp's imatrix tool collects: Σx² of each input column of every
matmul weight, over calibration tokens. Decoder linears come from evo.stats; the output head (the
tied embedding, when tied) is hooked here, since llama.cpp quantizes it with its own imatrix entry."""

from __future__ import annotations

import numpy as np
import torch

from evo.stats import collect_activation_stats


@torch.inference_mode()
def collect_importance(loaded, token_ids: np.ndarray, batch_size: int = 4) -> dict[str, torch.Tensor]:
    """Parameter name → Σx² per input column (float32, CPU)."""
    head = loaded.model.get_output_embeddings() if hasattr(loaded.model, "get_output_embeddings") else None
    sums: list[torch.Tensor] = []

    def hook(module, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        sums.append(x.pow(2).sum(0))

    handle = head.register_forward_pre_hook(hook) if head is not None else None
    try:
        stats = collect_activation_stats(loaded.model, loaded.info, token_ids, batch_size=batch_size)
    finally:
        if handle is not None:
            handle.remove()
    importance = {name: value.l2.float() ** 2 for name, value in stats.items()}
    if sums:
        head_name = next(n for n, p in loaded.model.named_parameters() if p is head.weight)
        importance[head_name] = torch.stack(sums).sum(0).float().cpu()
    return importance
