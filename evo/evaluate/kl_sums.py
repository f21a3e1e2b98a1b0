"""The four row sums of the top-k KL (metrics.topk_kl) in one pass over the logits, on CUDA.

For each row of logits x the KL needs the peak, log Σ exp(x − peak), and the same two for the tail
(the tokens outside the reference's top k). Written in torch and compiled, Inductor reads the 3.2 GB
of a 64 × 512 evaluation's bfloat16 logits three times (one online pass for the whole row, then the
tail's peak, then the tail's sum, each also reading a 1.6 GB boolean mask of the top-k ids that a
scatter wrote first): 4.4 ms of a 30 ms evaluation on an H200 (benchmarks/attention_paths.py
--profile). The Triton kernels here (_kl_triton.py) read each logit once, with the top k as a bitmask
(1 bit a logit, set by atomic OR): each program walks a few chunks of a row (_kl_triton's CHUNK, STEPS),
one exp a logit for both sums, the programs' sums combined in float64. Inductor does not write this itself (it turns one amax +
sum-exp pair into an online pass, not a masked second one).

`topk_row_sums(logits, ids)` is a torch custom op (opaque to torch.compile) returning [rows, 4]
float64: peak, log Σ exp(x − peak), a shift t of the tail and log Σ_tail exp(x − t) (t = 0 and −inf
for an empty tail). The torch path's t is the tail's peak; the kernel's is its chunks' peak, or the
tail's own peak where that lies 50 nats below (so no exp underflows that matters); every use is
t + log Σ_tail, which does not depend on t. The kernel sums in float32 within a chunk (relative
error ~1e-7) and in float64 across chunks; the torch path in float64. `available(tensor)` says
whether the kernel runs for that tensor (CUDA and Triton importable). If it ever fails (a Triton
that cannot compile it), the op computes the sums with torch ops and says so once; the KL never
depends on the kernel being there.
"""

from __future__ import annotations

import importlib.util
import warnings

import torch

from evo.errors import failure_reason

TRITON = importlib.util.find_spec("triton") is not None  # a constant, so torch.compile traces `available`
_FAILED: list[str] = []  # the reason the kernel failed, once: later calls go to torch directly


def available(tensor: torch.Tensor) -> bool:
    """The kernel runs for this tensor: it is on CUDA, Triton imports, and the kernel has not failed."""
    return tensor.is_cuda and TRITON and not _FAILED


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
def topk_row_sums(logits: torch.Tensor, ids: torch.Tensor, lean: bool | None = None) -> torch.Tensor:
    """[rows, 4] float64 (peak, log Σ, tail shift, log Σ_tail) for logits [rows, vocab], ids [rows, k];
    lean: the kernel's LEAN reductions on or off (None: its default; benchmarks compare the two)."""
    if available(logits):
        try:
            from evo.evaluate._kl_triton import row_sums

            return row_sums(logits.contiguous(), ids, lean=lean)
        except Exception as exc:  # noqa: BLE001 — any failure of the kernel: the same sums with torch ops
            _FAILED.append(failure_reason(exc))
            warnings.warn(f"the Triton top-k KL kernel failed ({_FAILED[0]}): torch ops instead", RuntimeWarning,
                          stacklevel=2)
    return torch_row_sums(logits, ids)


@topk_row_sums.register_fake
def _(logits: torch.Tensor, ids: torch.Tensor, lean: bool | None = None) -> torch.Tensor:
    return logits.new_empty((logits.shape[0], 4), dtype=torch.float64)
