"""The four row sums of the top-k KL (metrics.topk_kl) in one pass over the logits, on CUDA.

For each row of logits x the KL needs the peak, log Σ exp(x − peak), and the same two for the tail
(the tokens outside the reference's top k). Written in torch and compiled, Inductor reads the 3.2 GB
of a 64 × 512 evaluation's bfloat16 logits three times (one online pass for the whole row, then the
tail's peak, then the tail's sum, each also reading a 1.6 GB boolean mask of the top-k ids that a
scatter wrote first): 4.4 ms of a 30 ms evaluation on an H200 (benchmarks/attention_paths.py
--profile). Triton's kernel here reads each logit once, with the top k as a bitmask (1 bit a logit,
built from the ids by one scatter): two online log-sum-exps side by side. Inductor does not write this
kernel itself (it turns one amax + sum-exp pair into an online pass, not a masked second one).

`topk_row_sums(logits, ids)` is a torch custom op (opaque to torch.compile) returning [rows, 4]
float64: peak, log Σ, the tail's peak (0 for an empty tail) and log Σ_tail (−inf for an empty tail),
each sum shifted by its own peak as logsumexp does; exp in float32 and the sums in float64, as the
torch path. `available(tensor)` says whether it runs for that tensor (CUDA and Triton importable). If
the kernel ever fails (a Triton that cannot compile it), the op computes the same sums with torch
ops and says so once; the KL never depends on the kernel being there.
"""

from __future__ import annotations

import importlib.util
import warnings

import torch

BITS = 32  # top-k flags per int32 word
TRITON = importlib.util.find_spec("triton") is not None  # a constant, so torch.compile traces `available`
_FAILED: list[str] = []  # the reason the kernel failed, once: later calls go to torch directly


def available(tensor: torch.Tensor) -> bool:
    """The kernel runs for this tensor: it is on CUDA, Triton imports, and the kernel has not failed."""
    return tensor.is_cuda and TRITON and not _FAILED


def topk_bits(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """[rows, ceil(vocab / 32)] int32: bit c % 32 of word c // 32 set for every id c of the row (ids
    [rows, k]; a repeated id counts once)."""
    rows = ids.shape[0]
    ordered = ids.long().sort(-1).values
    repeated = torch.zeros_like(ordered, dtype=torch.bool)
    repeated[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    flags = torch.bitwise_left_shift(torch.ones_like(ordered, dtype=torch.int32), (ordered % BITS).int())
    flags = flags.masked_fill(repeated, 0)  # distinct bits of a word add as they OR
    words = torch.zeros(rows, -(-vocab // BITS), dtype=torch.int32, device=ids.device)
    return words.scatter_add_(1, ordered // BITS, flags)


def torch_row_sums(logits: torch.Tensor, ids: torch.Tensor, chunk: int = 1 << 26) -> torch.Tensor:
    """topk_row_sums with torch ops (the kernel's fallback, and its tests' reference): [rows, 4] float64,
    `chunk` logits at a time (its float32 copies stay ≈ 256 MB each)."""
    step = max(1, chunk // max(logits.shape[-1], 1))
    return torch.cat([_torch_row_sums(logits[r:r + step], ids[r:r + step])
                      for r in range(0, max(logits.shape[0], 1), step)])


def _torch_row_sums(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    x = logits.float()
    peak = x.amax(-1)
    log_sum = torch.log(torch.exp(x - peak[:, None]).sum(-1, dtype=torch.float64))
    outside = x.scatter(-1, ids.long(), float("-inf"))
    tail_peak = outside.amax(-1)
    tail_peak = torch.where(torch.isfinite(tail_peak), tail_peak, torch.zeros_like(tail_peak))
    log_tail = torch.log(torch.exp(outside - tail_peak[:, None]).sum(-1, dtype=torch.float64))
    return torch.stack([peak.double(), log_sum, tail_peak.double(), log_tail], dim=-1)


@torch.library.custom_op("evo::topk_row_sums", mutates_args=())
def topk_row_sums(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[rows, 4] float64 (peak, log Σ, tail peak, log Σ_tail) for logits [rows, vocab], ids [rows, k]."""
    if available(logits):
        try:
            from evo.evaluate._kl_triton import row_sums

            return row_sums(logits.contiguous(), topk_bits(ids, logits.shape[-1]))
        except Exception as exc:  # noqa: BLE001 — any failure of the kernel: the same sums with torch ops
            _FAILED.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            warnings.warn(f"the Triton top-k KL kernel failed ({_FAILED[0]}): torch ops instead", RuntimeWarning,
                          stacklevel=2)
    return torch_row_sums(logits, ids)


@topk_row_sums.register_fake
def _(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return logits.new_empty((logits.shape[0], 4), dtype=torch.float64)
