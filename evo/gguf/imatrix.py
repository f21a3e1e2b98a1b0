"""The importance matrix llama.cpp's imatrix tool collects: Σx² of each input column of every
matmul weight over calibration tokens — the decoder linears and the output head (the tied
embedding, when tied), which llama.cpp quantizes with its own imatrix entry."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from evo.evaluate.forward import Hook, run_forward, token_batch


class _SumOfSquares:
    """A forward pre-hook summing x² per input column (float64: millions of tokens)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        squares = x.pow(2).sum(0)
        self.total = squares if self.total is None else self.total + squares


def collect_importance(loaded, token_ids: np.ndarray, batch_size: int = 4) -> dict[str, torch.Tensor]:
    """Parameter name → Σx² per input column (float32, CPU). A linear the forward never reaches
    (a dropped block) gets no entry."""
    model, info = loaded.model, loaded.info
    token_ids = token_batch(token_ids, vocab_size=info.vocab_size)
    sums: dict[str, _SumOfSquares] = {}
    hooks = []
    for lin in info.linears():
        module = model.get_submodule(lin.module)
        if isinstance(module, nn.Linear):  # not replaced by a structural drop
            sums[lin.name] = _SumOfSquares()
            hooks.append(Hook(module, sums[lin.name], pre=True))
    head = model.get_output_embeddings()
    if head is not None:
        head_name = next(n for n, p in model.named_parameters() if p is head.weight)
        sums[head_name] = _SumOfSquares()
        hooks.append(Hook(head, sums[head_name], pre=True))
    run_forward(model, token_ids, batch_size, hooks=hooks)
    return {name: acc.total.float().cpu() for name, acc in sums.items() if acc.total is not None}
