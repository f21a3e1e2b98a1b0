"""Test oracles: the slow, obvious ways to compute what evo computes fast (full-vocabulary
log-probabilities and the exact KL from them), kept with the tests that check evo against them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from evo.errors import EvoError
from evo.evaluate.forward import check_batch_size, token_batch

ProgressCallback = Callable[[int, int], None]
DEFAULT_BATCH_SIZE = 4


def next_token_logprobs(
    model: torch.nn.Module,
    token_ids,
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    progress: ProgressCallback | None = None,
) -> Iterator[torch.Tensor]:
    """Float32 log-probabilities of the next token at every position, one [b, L, vocab] tensor per
    batch of b ≤ batch_size sequences of token_ids [n, L], on the model's device.

    `list(next_token_logprobs(dense, ids, batch_size))` is the reference kl_to_reference takes;
    move it to the CPU or store it in bfloat16 to save memory (kl_to_reference casts it back).
    Arguments are checked here, not at the first batch.
    """
    check_batch_size(batch_size)
    return _logprob_batches(model, token_batch(token_ids).numpy(), batch_size, progress)


def _logprob_batches(
    model: torch.nn.Module, ids: np.ndarray, batch_size: int, progress: ProgressCallback | None
) -> Iterator[torch.Tensor]:
    device = next(model.parameters()).device
    count = ids.shape[0]
    for start in range(0, count, batch_size):
        with torch.no_grad():
            batch = torch.from_numpy(ids[start : start + batch_size]).to(device)
            logits = model(input_ids=batch, use_cache=False).logits
            out = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
            for row in range(batch.shape[0]):  # row by row: no second batch-sized float32 temporary
                out[row] = torch.log_softmax(logits[row].float(), dim=-1)
            del logits
        if progress:
            progress(min(start + batch_size, count), count)
        yield out


@torch.no_grad()
def kl_to_reference(
    model: torch.nn.Module,
    token_ids,
    reference: Sequence[torch.Tensor],
    *,
    progress: ProgressCallback | None = None,
) -> float:
    """Mean over all n × L positions of KL(p_reference ‖ p_model) in nats, where reference is the
    list next_token_logprobs gave for the same token_ids (its batching is reused)."""
    ids = token_batch(token_ids).numpy()
    if not reference:
        raise EvoError("the reference log-probabilities are empty: compute them with next_token_logprobs")
    sizes = [int(r.shape[0]) for r in reference]
    if sum(sizes) != ids.shape[0] or any(s != sizes[0] for s in sizes[:-1]) or sizes[-1] > sizes[0]:
        raise EvoError(
            f"the reference holds batches of {sizes} sequences for {ids.shape[0]} token sequences: "
            "compute it with next_token_logprobs on the same token_ids"
        )
    total = 0.0
    for ref, logprobs in zip(reference, next_token_logprobs(model, ids, sizes[0], progress=progress)):
        if ref.shape != logprobs.shape:
            raise EvoError(
                f"a reference batch has shape {tuple(ref.shape)}, the model gives {tuple(logprobs.shape)}: "
                "compute the reference with a model of the same vocabulary on the same token_ids"
            )
        ref = ref.to(device=logprobs.device, dtype=torch.float32)
        for row in range(ref.shape[0]):
            # kl_div(input=log q, target=log p, log_target=True) sums p · (log p − log q).
            total += float(F.kl_div(logprobs[row], ref[row], reduction="sum", log_target=True))
    return total / (ids.shape[0] * ids.shape[1])
