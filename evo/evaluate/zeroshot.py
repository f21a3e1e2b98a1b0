"""Zero-shot multiple-choice accuracy by log-likelihood, the way lm-eval-harness scores it.

For every (context, continuation) pair: the context and context + continuation are tokenized
(no special tokens, as lm-eval does for causal HF models), the continuation's tokens are the ids
after the context's, and their log-probabilities are summed. Trailing spaces of a context move to
the front of its continuation before tokenizing (lm-eval's `_encode_pair`).
  acc       the choice with the highest summed log-likelihood is the answer
  acc_norm  the same after dividing by the continuation's length in characters
Both come with lm-eval's standard error sqrt(p (1 − p) / (n − 1)). Pairs are scored in batches
of similar length, right-padded, on the model's device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from evo.types import Example

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class TaskResult:
    task: str
    n: int
    acc: float
    acc_stderr: float
    acc_norm: float | None
    acc_norm_stderr: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    return whole[: len(context_ids)], whole[len(context_ids):]


@torch.no_grad()
def loglikelihoods(model, tokenizer, pairs: Sequence[tuple[str, str]], *, batch_size: int = 16,
                   max_length: int | None = None, progress: ProgressCallback | None = None) -> list[float]:
    """Summed log-probability of each continuation given its context."""
    device = next(model.parameters()).device
    limit = max_length or getattr(model.config, "max_position_embeddings", 2048) or 2048
    encoded = []
    for context, continuation in pairs:
        context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
        if not continuation_ids:
            raise ValueError(f"continuation {continuation!r} has no tokens of its own")
        full = (context_ids + continuation_ids)[-(limit + 1):]  # lm-eval keeps the end when too long
        encoded.append((full, min(len(continuation_ids), len(full) - 1)))
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))  # similar lengths batch together
    results = [0.0] * len(encoded)
    done = 0
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = len(encoded[batch[0]][0]) - 1
        inputs = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            ids = encoded[index][0][:-1]  # the last token is only a target
            inputs[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        logits = model(input_ids=inputs.to(device), attention_mask=mask.to(device)).logits
        for row, index in enumerate(batch):
            full, count = encoded[index]
            length = len(full) - 1  # logits[p] predicts full[p + 1]
            rows = F.log_softmax(logits[row, length - count:length].float(), dim=-1)
            targets = torch.tensor(full[-count:], device=rows.device)
            results[index] = float(rows.gather(1, targets[:, None]).sum())
        done += len(batch)
        if progress is not None:
            progress(done, len(order))
    return results


def score_task(name: str, model, tokenizer, examples: Sequence[Example], *, metrics: Sequence[str] = ("acc", "acc_norm"),
               batch_size: int = 16, progress: ProgressCallback | None = None) -> TaskResult:
    pairs = [(c, t) for example in examples for c, t in zip(example.contexts, example.continuations)]
    scores = loglikelihoods(model, tokenizer, pairs, batch_size=batch_size, progress=progress)
    correct = correct_norm = 0
    position = 0
    for example in examples:
        k = len(example.contexts)
        mine = scores[position:position + k]
        position += k
        correct += int(_argmax(mine) == example.label)
        normed = [s / max(len(t), 1) for s, t in zip(mine, example.continuations)]
        correct_norm += int(_argmax(normed) == example.label)
    n = len(examples)
    acc = correct / n
    norm = correct_norm / n if "acc_norm" in metrics else None
    return TaskResult(task=name, n=n, acc=acc, acc_stderr=_stderr(acc, n), acc_norm=norm,
                      acc_norm_stderr=_stderr(norm, n) if norm is not None else None)


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def _stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")
