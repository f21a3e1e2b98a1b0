"""The Triton kernel behind evo.evaluate.kl_sums (imported only where Triton is): one pass over each
row of logits gives the four sums the top-k KL needs. Kept apart because triton.jit reads this
module's globals (`tl`), which must not be imported where Triton is absent."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 2048  # logits per step of a row (16 steps at SmolLM2's 49,152): 8 warps, 8 logits a thread
WARPS = 8


@triton.jit
def _row_sums(logits, bits, out, logits_stride, bits_stride, vocab: tl.constexpr, BLOCK: tl.constexpr):
    """Row r of logits [rows, vocab] and its top-k bitmask (bit c % 32 of bits[r, c // 32]) →
    out[r] = (peak, log Σ exp(x − peak), tail peak, log Σ_tail exp(x − tail peak)) as float64.

    vocab is a compile-time constant (one kernel per vocabulary size, its loop bounds known).
    Online log-sum-exp, twice: every step rescales the running sums to the new running peaks, so
    each logit is read once. exp is float32 (as the fused torch path); the sums and rescales float64."""
    row = tl.program_id(0).to(tl.int64)
    row_logits = logits + row * logits_stride
    row_bits = bits + row * bits_stride
    neg_inf = float("-inf")
    peak = tl.full((), neg_inf, tl.float32)
    tail_peak = tl.full((), neg_inf, tl.float32)
    total = tl.full((), 0.0, tl.float64)
    tail = tl.full((), 0.0, tl.float64)
    for start in range(0, vocab, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        inside = cols < vocab
        x = tl.load(row_logits + cols, mask=inside, other=neg_inf).to(tl.float32)
        word = tl.load(row_bits + cols // 32, mask=inside, other=0)
        top = ((word >> (cols % 32)) & 1) != 0
        x_tail = tl.where(top, neg_inf, x)

        new_peak = tl.maximum(peak, tl.max(x, 0))
        shift = tl.where(new_peak == neg_inf, 0.0, new_peak)  # all −inf so far: nothing to add
        scale = tl.exp((peak - shift).to(tl.float64))
        total = total * scale + tl.sum(tl.exp(x - shift).to(tl.float64), 0)
        peak = new_peak

        new_tail_peak = tl.maximum(tail_peak, tl.max(x_tail, 0))
        tail_shift = tl.where(new_tail_peak == neg_inf, 0.0, new_tail_peak)
        tail_scale = tl.exp((tail_peak - tail_shift).to(tl.float64))
        tail = tail * tail_scale + tl.sum(tl.exp(x_tail - tail_shift).to(tl.float64), 0)
        tail_peak = new_tail_peak

    tail_peak = tl.where(tail_peak == neg_inf, 0.0, tail_peak)  # an empty tail: shift 0, log Σ = −inf
    base = out + row * 4
    tl.store(base, peak.to(tl.float64))
    tl.store(base + 1, tl.log(total))
    tl.store(base + 2, tail_peak.to(tl.float64))
    tl.store(base + 3, tl.log(tail))


def row_sums(logits: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """[rows, 4] float64 of _row_sums for logits [rows, vocab] (last dimension contiguous) and bits
    [rows, ceil(vocab / 32)] int32."""
    rows, vocab = logits.shape
    out = torch.empty(rows, 4, dtype=torch.float64, device=logits.device)
    if rows:
        _row_sums[(rows,)](logits, bits, out, logits.stride(0), bits.stride(0), vocab=vocab, BLOCK=BLOCK,
                           num_warps=WARPS)
    return out
