"""Quality of a (compressed) causal LM on token batches: perplexity over non-overlapping windows,
and the KL divergence of its next-token distributions to those of a reference (the dense model).

Logits are produced one batch at a time and reduced in float32, so memory is bounded by
batch_size × seq_len × vocab, never by the corpus length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from evo.errors import EvoError

ProgressCallback = Callable[[int, int], None]  # (done, total), the convention of evo.data.ccds

DEFAULT_SEQ_LEN = 512
DEFAULT_BATCH_SIZE = 4


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity over `windows` non-overlapping windows of `seq_len` tokens.

    Each window predicts its last seq_len - 1 tokens from the ones before them (the first token
    of a window has no context inside it, so it is not scored); tokens_predicted counts them all.
    """

    ppl: float
    mean_nll: float  # nats per predicted token
    tokens_predicted: int
    windows: int
    seq_len: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def tokenize_for_eval(tokenizer, text: str) -> np.ndarray:
    """Token ids of the whole text in one call, int64 [n].

    This is the Hugging Face perplexity guide's recipe: the joined text is tokenized once with
    the tokenizer's default special tokens, so a tokenizer that prepends BOS (Llama-2) puts one
    BOS at the very start and none inside, and one that adds nothing (SmolLM2, GPT-2) adds
    nothing. Tokenizing documents separately would change the ids at document boundaries.
    """
    if not isinstance(text, str) or not text.strip():
        raise EvoError("the evaluation text is empty: pass a corpus with text")
    # verbose=False: the text is meant to be longer than the model's context; it is cut later.
    ids = tokenizer(text, verbose=False)["input_ids"]
    return np.asarray(ids, dtype=np.int64)


def eval_windows(token_ids, seq_len: int = DEFAULT_SEQ_LEN, max_tokens: int | None = None) -> np.ndarray:
    """The stream cut into non-overlapping windows, int64 [windows, seq_len]; the partial tail
    window is dropped, and max_tokens (if given) keeps only the whole windows that fit in it."""
    ids = _as_stream(token_ids)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise EvoError(f"seq_len={seq_len!r} is too small: a window needs at least 2 tokens")
    available = ids.size // seq_len
    if available == 0:
        raise EvoError(f"the evaluation text has {ids.size} tokens, fewer than one window of {seq_len}: "
                       "pass more text or a smaller seq_len")
    windows = available
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < seq_len:
            raise EvoError(f"max_tokens={max_tokens!r} is less than one window of {seq_len} tokens: "
                           "raise it or lower seq_len")
        windows = min(available, max_tokens // seq_len)
    return ids[: windows * seq_len].reshape(windows, seq_len)


def _as_stream(token_ids) -> np.ndarray:
    if isinstance(token_ids, torch.Tensor):
        token_ids = token_ids.detach().cpu().numpy()
    ids = np.asarray(token_ids)
    if ids.ndim != 1:
        raise EvoError(f"token_ids must be one 1-D stream of token ids, got shape {ids.shape}")
    if ids.size and ids.dtype.kind not in "iu":
        raise EvoError(f"token_ids must be integers, got {ids.dtype}")
    return ids.astype(np.int64, copy=False)


def _as_batch(token_ids) -> np.ndarray:
    if isinstance(token_ids, torch.Tensor):
        token_ids = token_ids.detach().cpu().numpy()
    ids = np.asarray(token_ids)
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise EvoError(f"token_ids must be a non-empty 2-D array [sequences, seq_len], got shape {ids.shape}")
    if ids.dtype.kind not in "iu":
        raise EvoError(f"token_ids must be integers, got {ids.dtype}")
    return ids.astype(np.int64, copy=False)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EvoError(f"batch_size={batch_size!r} must be a positive integer")


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _logits(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model(input_ids=batch, use_cache=False).logits


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    token_ids,
    *,
    seq_len: int = DEFAULT_SEQ_LEN,
    max_tokens: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressCallback | None = None,
) -> PerplexityResult:
    """Perplexity of `model` on a 1-D token stream, the standard way: non-overlapping windows of
    seq_len (partial tail dropped), mean NLL over the seq_len - 1 predicted tokens of each, exp.

    Runs on the model's device; progress is called with (windows done, windows total).
    """
    _check_batch_size(batch_size)
    windows = eval_windows(token_ids, seq_len, max_tokens)
    device = _device_of(model)
    total_nll = 0.0  # a Python float (float64) so thousands of batch sums lose nothing
    count = len(windows)
    for start in range(0, count, batch_size):
        batch = torch.from_numpy(windows[start : start + batch_size]).to(device)
        logits = _logits(model, batch)
        # One sequence at a time: the float32 copy of a row is seq_len × vocab, not batch × that.
        for row in range(batch.shape[0]):
            total_nll += float(
                F.cross_entropy(logits[row, :-1].float(), batch[row, 1:], reduction="sum")
            )
        del logits
        if progress:
            progress(min(start + batch_size, count), count)
    predicted = count * (seq_len - 1)
    mean_nll = total_nll / predicted
    return PerplexityResult(
        ppl=math.exp(mean_nll), mean_nll=mean_nll, tokens_predicted=predicted, windows=count, seq_len=seq_len
    )


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
    _check_batch_size(batch_size)
    return _logprob_batches(model, _as_batch(token_ids), batch_size, progress)


def _logprob_batches(
    model: torch.nn.Module, ids: np.ndarray, batch_size: int, progress: ProgressCallback | None
) -> Iterator[torch.Tensor]:
    device = _device_of(model)
    count = ids.shape[0]
    for start in range(0, count, batch_size):
        with torch.no_grad():
            batch = torch.from_numpy(ids[start : start + batch_size]).to(device)
            logits = _logits(model, batch)
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
    ids = _as_batch(token_ids)
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
