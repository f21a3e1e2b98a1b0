"""Perplexity of a (compressed) causal LM the standard way: the text tokenized once, cut into
non-overlapping windows, mean NLL over every predicted token (what `evo eval --dataset` reports).

Logits are produced one batch at a time and reduced in float32, so memory is bounded by
batch_size × seq_len × vocab, never by the corpus length.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from evo.errors import EvoError
from evo.evaluate.forward import check_batch_size, forward_batches, token_stream
from evo.evaluate.metrics import nll_sum

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
    ids = token_stream(token_ids)
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
    check_batch_size(batch_size)
    windows = eval_windows(token_ids, seq_len, max_tokens)
    total_nll = 0.0  # a Python float (float64) so thousands of batch sums lose nothing
    count = len(windows)
    for _, batch, logits in forward_batches(model, windows, batch_size, progress=progress):
        # One sequence at a time: the float32 copy of a row is seq_len × vocab, not batch × that.
        for row in range(batch.shape[0]):
            total_nll += nll_sum(logits[row], batch[row])
    predicted = count * (seq_len - 1)
    mean_nll = total_nll / predicted
    return PerplexityResult(
        ppl=math.exp(mean_nll), mean_nll=mean_nll, tokens_predicted=predicted, windows=count, seq_len=seq_len
    )
