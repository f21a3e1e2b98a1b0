"""Per-input-channel activation statistics of every decoder linear, from forward pre-hooks.

They feed activation-aware pruning (wanda: ‖X_j‖₂, linf: max|X_j|); a digest names them in caches.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from evo.compress.prune import ActivationStats
from evo.errors import EvoError
from evo.evaluate.forward import Hook, run_forward, token_batch
from evo.fileio import atomic_path
from evo.types import ModelInfo


class _Accumulator:
    """Running sum of squares (float64: millions of tokens lose float32 precision) and max |x|."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.sum_squares = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.absmax = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.calls = 0

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1])
        self.sum_squares += x.double().pow(2).sum(dim=0)
        self.absmax = torch.maximum(self.absmax, x.abs().amax(dim=0).float())
        self.calls += 1

    def stats(self) -> ActivationStats:
        return ActivationStats(
            l2=self.sum_squares.sqrt().float().cpu(),
            absmax=self.absmax.cpu(),
        )


def collect_activation_stats(
    model: nn.Module, info: ModelInfo, token_ids: np.ndarray, batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, ActivationStats]:
    """Statistics of the inputs of every decoder linear over all tokens, keyed by weight name, and
    of the output head's input keyed by the head's weight (a tied head: the embedding's name), which
    the mse quantizer of the embedding/head weighs its columns by (llama.cpp's imatrix has the same
    entry); `progress(done, total)` counts sequences.

    `token_ids` is [n_sequences, length] with no padding, so every position counts. A linear
    the forward never reaches (a dropped block) gets no entry.
    """
    token_ids = token_batch(token_ids, vocab_size=info.vocab_size)
    device = next(model.parameters()).device
    accumulators: dict[str, _Accumulator] = {}
    hooks = []
    for lin in info.linears():
        module = model.get_submodule(lin.module)
        if not isinstance(module, nn.Linear):
            continue  # replaced by a structural drop
        accumulators[lin.name] = _Accumulator(lin.shape[1], device)
        hooks.append(Hook(module, accumulators[lin.name], pre=True))
    head = model.get_output_embeddings()
    stored = {tensor.name for tensor in info.non_decoder}
    if isinstance(head, nn.Linear):
        name = next((n for n, p in model.named_parameters() if p is head.weight), None)
        if name in stored:
            accumulators[name] = _Accumulator(head.weight.shape[1], device)
            hooks.append(Hook(head, accumulators[name], pre=True))
    run_forward(model, token_ids, batch_size, hooks=hooks, progress=progress)
    return {name: acc.stats() for name, acc in accumulators.items() if acc.calls}


def stats_digest(model_id: str, token_ids: np.ndarray) -> str:
    """A short hash naming the statistics a model gives on these tokens (for cache keys and run
    records); two calibration sets with the same ids in the same order share it."""
    token_ids = token_batch(token_ids).numpy()
    h = hashlib.sha256()
    h.update(json.dumps([model_id, list(token_ids.shape)]).encode())
    h.update(np.ascontiguousarray(token_ids, dtype="<i8").tobytes())
    return h.hexdigest()[:16]


def save_stats(stats: dict[str, ActivationStats], path: str | os.PathLike, digest: str | None = None) -> None:
    """Write statistics as safetensors (two tensors per linear), atomically; `digest` (stats_digest
    of the model and tokens they come from) goes in the file's metadata for cached_stats."""
    from safetensors.torch import save_file

    tensors = {}
    for name, value in stats.items():
        tensors[f"{name}::l2"] = value.l2.detach().float().cpu().contiguous()
        tensors[f"{name}::absmax"] = value.absmax.detach().float().cpu().contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=None if digest is None else {"digest": digest})


def cached_stats(path: str | os.PathLike, digest: str) -> dict[str, ActivationStats] | None:
    """The statistics saved at `path` with this digest (save_stats(..., digest=)), else None: no
    file, another model or other tokens, or a file that cannot be read (the caller collects anew)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get("digest")
    except (SafetensorError, OSError):
        return None
    if recorded != digest:
        return None
    try:
        return load_stats(path)
    except EvoError:
        return None


def load_stats(path: str | os.PathLike) -> dict[str, ActivationStats]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise EvoError(f"{path} is corrupt ({exc}): delete it and the statistics will be recollected") from None
    names = sorted({key.rsplit("::", 1)[0] for key in tensors})
    return {name: ActivationStats(l2=tensors[f"{name}::l2"], absmax=tensors[f"{name}::absmax"]) for name in names}
