"""Run a model over token batches: the one forward loop behind activation statistics, block
influence, the compressibility study, CCDS embeddings, the dense reference, perplexity and the
evaluator, and the one check of the token ids they are given.

Batches run in eval mode, without gradients or a KV cache, with the caller's hooks registered
for the duration; the model's training flag and its hooks are as before afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from evo.errors import EvoError

ProgressCallback = Callable[[int, int], None]  # (sequences done, sequences total)


class StopForward(Exception):
    """Raised by a hook to end a batch's forward pass early (its logits are then None)."""


@dataclass(frozen=True)
class Hook:
    """A hook on one module: a forward pre-hook (pre=True, fn(module, args)) or a forward hook
    (fn(module, args, output), or fn(module, args, kwargs, output) with with_kwargs=True)."""

    module: nn.Module
    fn: Callable
    pre: bool = False
    with_kwargs: bool = False

    def register(self):
        if self.pre:
            return self.module.register_forward_pre_hook(self.fn, with_kwargs=self.with_kwargs)
        return self.module.register_forward_hook(self.fn, with_kwargs=self.with_kwargs)


def token_batch(token_ids, *, min_length: int = 1, vocab_size: int | None = None) -> torch.Tensor:
    """Token ids [sequences, length] as an int64 CPU tensor, or an EvoError saying what is wrong:
    not 2-D, empty, shorter than min_length, not integers, or outside [0, vocab_size)."""
    if isinstance(token_ids, torch.Tensor):
        ids = token_ids.detach().cpu()
        integral = not ids.is_floating_point() and not ids.is_complex() and ids.dtype != torch.bool
        dtype = ids.dtype
    else:
        array = np.asarray(token_ids)
        integral = array.dtype.kind in "iu"
        dtype = array.dtype
        ids = torch.from_numpy(array.astype(np.int64)) if integral else None
    shape = tuple(ids.shape) if ids is not None else np.shape(token_ids)
    if len(shape) != 2 or shape[0] == 0 or shape[1] < min_length:
        raise EvoError(f"token ids must be a non-empty array [sequences, length ≥ {min_length}], got shape {shape}")
    if not integral:
        raise EvoError(f"token ids must be integers, got {dtype}")
    ids = ids.long()
    if vocab_size is not None and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise EvoError(f"token ids must lie in [0, {vocab_size}) for this model's vocabulary")
    return ids


def token_stream(token_ids) -> np.ndarray:
    """One 1-D stream of token ids (a tokenized text) as int64, or an EvoError; may be empty."""
    ids = token_ids.detach().cpu().numpy() if isinstance(token_ids, torch.Tensor) else np.asarray(token_ids)
    if ids.ndim != 1:
        raise EvoError(f"token ids must be one 1-D stream, got shape {ids.shape}")
    if ids.size == 0:
        return ids.astype(np.int64)
    return token_batch(ids[None, :])[0].numpy()


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EvoError(f"{name}={value!r} must be a positive integer")
    return value


def check_batch_size(batch_size: int) -> int:
    return check_positive_int("batch_size", batch_size)


def forward_batches(
    model: nn.Module,
    token_ids,
    batch_size: int,
    *,
    hooks: Sequence[Hook] = (),
    progress: ProgressCallback | None = None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """Run `model` over token_ids [n, L] (checked, see token_batch) `batch_size` sequences at a
    time on its device; yield (index of the batch's first sequence, the batch on the device, its
    logits, or None when a hook raised StopForward). progress gets (sequences done, total)."""
    ids = token_batch(token_ids)
    check_batch_size(batch_size)
    return _batches(model, ids, batch_size, hooks, progress)


def _batches(model, ids, batch_size, hooks, progress):
    device = next(model.parameters()).device
    count = ids.shape[0]
    was_training = model.training
    handles = [hook.register() for hook in hooks]
    model.eval()
    try:
        if progress:
            progress(0, count)  # the step starts now: its elapsed time counts from here
        for start in range(0, count, batch_size):
            batch = ids[start : start + batch_size].to(device)
            with torch.no_grad():
                try:
                    logits = model(input_ids=batch, use_cache=False).logits
                except StopForward:
                    logits = None
            yield start, batch, logits
            del logits
            if progress:
                progress(min(start + batch_size, count), count)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def run_forward(model: nn.Module, token_ids, batch_size: int, *, hooks: Sequence[Hook] = (),
                progress: ProgressCallback | None = None) -> None:
    """forward_batches for the hooks' sake only: every batch runs, the logits are dropped."""
    for _ in forward_batches(model, token_ids, batch_size, hooks=hooks, progress=progress):
        pass


def per_batch(progress: Callable[[int, int], None] | None, batch_size: int) -> ProgressCallback | None:
    """A (batches done, batches total) callback seen as a (sequences done, total) one."""
    if progress is None:
        return None
    return lambda done, total: progress(-(-done // batch_size), -(-total // batch_size))
