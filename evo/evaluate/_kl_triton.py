"""The Triton kernels behind evo.evaluate.kl_sums (imported only where Triton is). Kept apart because
triton.jit reads this module's globals (`tl`), which must not be imported where Triton is absent.

Measured on an H200 (64 × 512 tokens, SmolLM2's 49,152 logits a row, benchmarks/attention_paths.py
--profile): a first version that walked each row in 2,048-logit steps with two online log-sum-exps
in float64 took 3.5 ms, no faster than Inductor's three passes, and sorting the ids to build the
bitmask took 1.3 ms more. This version gives each (row, 8,192-logit chunk) its own program: the chunk
sits in registers, one exp a logit serves both sums, float32 within the chunk, and the chunks are
combined in float64 by a second kernel; the bitmask is set by atomic OR (repeated ids need no sort)
and kept for the reference rows it was built from (bits_for); the float64 combine is one kernel.
Session 28: programs walk STEPS chunks each (merged online in float32) and lay a chunk out as
[CHUNK / 32, 32] so each bitmask word is loaded once (WORDS): 2.04 ms against 2.87 for the session-27
shape, the sums alone (constants below). Session 29 tried keeping the four sums a bitmask word at a
time (reductions within a warp each step, one reduction across warps a program): slower at every
shape tried, 2.45 ms at best against 2.05 for this one in the same run (kl_kernel_s29_h200.json).
Session 30: LEAN drops the tail's peak (a block reduction and a masked copy of the chunk a step) except
where the tail's sum on the chunk's peak underflows: 4096 × 4 × 3 went from 2.15 to 1.77 ms, and at
2048 × 4 × 3 it is 1.64 ms (kl_kernel_s30_h200.json, one run); in the search the 64 × 512 full
evaluation went from 24.94 to 24.30 ms (search_throughput_s30_*_h200.json, one lease).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

# The program's shape, from benchmarks/kl_kernel.py on an H200 (32,768 rows × 49,152 bf16 logits, the sums alone):
# session 28: 4096 × 4 × 3 with WORDS 2.04 ms; without WORDS 2.34; session 27's 8192 × 8 × 1 2.87 (one run).
# Session 30, with WORDS and LEAN: 2048 × 4 × 3 1.643 ms, 8192 × 8 × 2 1.642, 1024 × 2 × 4 1.728, 4096 × 4 × 3
# 1.774; 4096 × 4 × 3 without LEAN 2.153 (one run).
CHUNK = 2048  # logits a step: 16 a thread at 4 warps, in registers
WARPS = 4
STEPS = 3  # chunks a program walks
WORDS = True  # chunks laid out [CHUNK / 32, 32], one bitmask load a word
LEAN = True  # three block reductions a chunk, not four: the tail's peak only where its sum underflows
TAIL_RESCUE = -50.0  # a chunk's tail peak this far (nats) below its peak: its tail is summed on its own shift
KEEP_BITS = 4  # bitmasks kept (bits_for): a search alternates between its stages' reference rows
KEEP_BITS_BYTES = 64 << 20  # only bitmasks this small are kept (a 4 x 512 screen's is 12.6 MB, 64 x 512's 201 MB)
_BITS: list[tuple[torch.Tensor, tuple, torch.Tensor]] = []  # (ids held, their key, bitmask), oldest first


@triton.jit
def _set_bits(ids, bits, k, ids_stride, bits_stride, K_BLOCK: tl.constexpr):
    """bits[r, c // 32] |= 1 << (c % 32) for every id c of row r (a repeated id sets its bit once)."""
    row = tl.program_id(0).to(tl.int64)
    lanes = tl.arange(0, K_BLOCK)
    present = lanes < k
    column = tl.load(ids + row * ids_stride + lanes, mask=present, other=0).to(tl.int32)
    flag = tl.full((K_BLOCK,), 1, tl.int32) << (column % 32)
    tl.atomic_or(bits + row * bits_stride + column // 32, flag, mask=present)


@triton.jit
def _chunk_sums(logits, bits, out, logits_stride, bits_stride, vocab: tl.constexpr, CHUNK: tl.constexpr,
                STEPS: tl.constexpr, RESCUE: tl.constexpr, WORDS: tl.constexpr, LEAN: tl.constexpr,
                RESCUE_SUM: tl.constexpr):
    """Program (r, g): chunks g·STEPS … g·STEPS + STEPS − 1 of CHUNK logits of row r of logits [rows, vocab]
    with its top-k bitmask → out[r, g] = (m, Σ exp(x − m), t, Σ_tail exp(x − t)) in float32, m the peak and
    t the shift of the tail sum (0, with Σ_tail = 0, where the chunks hold no tail). Each chunk's tail is
    summed on the chunk's peak, or on the tail's own peak where that lies more than RESCUE nats below it
    (the tail's exps would underflow on the peak's shift); the chunks of a program are merged online.
    STEPS > 1 gives each program several chunks (fewer programs, each chunk's loads issued while the
    previous one reduces); STEPS = 1 is one chunk a program. WORDS lays a chunk out as [CHUNK / 32, 32]:
    each bitmask word is loaded once for its 32 logits (the flat layout loads it once a logit).
    LEAN: the tail summed on the peak's shift unless that sum is below RESCUE_SUM = exp(RESCUE) (then on its
    own peak, as above): three block reductions a chunk, not four, and no masked copy of the chunk. The same
    sums to float32 rounding: a tail sum ≥ exp(RESCUE) on the peak's shift is one whose terms that underflow
    (below e^-87) are under e^-37 of it. (A tuple tl.reduce of both sums would make it two; Triton 3.5's
    interpreter cannot reduce a tuple of 2-D blocks, so the CPU tests could not check it.)

    vocab is a compile-time constant (one kernel per vocabulary size)."""
    row = tl.program_id(0).to(tl.int64)
    group = tl.program_id(1)
    neg_inf = float("-inf")
    m = tl.full((), neg_inf, tl.float32)  # the running peak, sum, tail shift and tail sum
    s = tl.zeros((), tl.float32)
    t = tl.full((), neg_inf, tl.float32)
    u = tl.zeros((), tl.float32)
    for step in tl.static_range(STEPS):
        if WORDS:
            lanes = tl.arange(0, 32)
            words = (group * STEPS + step) * (CHUNK // 32) + tl.arange(0, CHUNK // 32)
            cols = words[:, None] * 32 + lanes[None, :]
            inside = cols < vocab
            x = tl.load(logits + row * logits_stride + cols, mask=inside, other=neg_inf).to(tl.float32)
            word = tl.load(bits + row * bits_stride + words, mask=words * 32 < vocab, other=0)
            top = ((word[:, None] >> lanes[None, :]) & 1) != 0
        else:
            cols = (group * STEPS + step) * CHUNK + tl.arange(0, CHUNK)
            inside = cols < vocab
            x = tl.load(logits + row * logits_stride + cols, mask=inside, other=neg_inf).to(tl.float32)
            word = tl.load(bits + row * bits_stride + cols // 32, mask=inside, other=0)
            top = ((word >> (cols % 32)) & 1) != 0
        peak = tl.max(x)  # −inf only for a chunk wholly past the vocabulary (the last program's)
        shift = tl.where(peak == neg_inf, 0.0, peak)
        e = tl.exp(x - shift)
        if LEAN:
            total = tl.sum(e)
            tail = tl.sum(tl.where(top, 0.0, e))
            tail_shift = shift
            if tail < RESCUE_SUM:  # the tail far below the peak (or empty): its own shift (rare)
                x_tail = tl.where(top, neg_inf, x)
                tail_peak = tl.max(x_tail)
                tail_shift = tl.where(tail_peak == neg_inf, 0.0, tail_peak)
                tail = tl.sum(tl.exp(x_tail - tail_shift))
        else:
            total = tl.sum(e)
            x_tail = tl.where(top, neg_inf, x)
            tail_peak = tl.max(x_tail)
            if tail_peak - shift >= RESCUE:
                tail_shift = shift
                tail = tl.sum(tl.where(top, 0.0, e))
            else:  # the tail far below the peak (or empty): its own shift (rare: a second exp over the chunk)
                tail_shift = tl.where(tail_peak == neg_inf, 0.0, tail_peak)
                tail = tl.sum(tl.exp(x_tail - tail_shift))
        peak_now = tl.maximum(m, peak)
        base = tl.where(peak_now == neg_inf, 0.0, peak_now)
        s = s * tl.exp(m - base) + total * tl.exp(peak - base)
        m = peak_now
        has_tail = tail > 0
        shift_now = tl.where(has_tail, tl.maximum(t, tail_shift), t)
        u = tl.where(has_tail, u * tl.exp(t - shift_now) + tail * tl.exp(tail_shift - shift_now), u)
        t = shift_now
    at = out + (row * tl.num_programs(1) + group) * 4
    tl.store(at, m)
    tl.store(at + 1, s)
    tl.store(at + 2, tl.where(t == neg_inf, 0.0, t))
    tl.store(at + 3, u)


@triton.jit
def _combine(parts, out, chunks, C_BLOCK: tl.constexpr):
    """Row r's chunk sums parts[r, c] = (m, Σ, t, Σ_tail) → out[r] = (peak, log Σ exp(x − peak), tail
    shift, log Σ_tail exp(x − shift)) in float64; the shift is the largest t of the chunks that have a
    tail (0 and log 0 = −inf where none has)."""
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, C_BLOCK)
    present = c < chunks
    neg_inf = float("-inf")
    base = parts + (row * chunks + c) * 4
    peak_c = tl.load(base, mask=present, other=neg_inf).to(tl.float64)
    total_c = tl.load(base + 1, mask=present, other=0.0).to(tl.float64)
    shift_c = tl.load(base + 2, mask=present, other=0.0).to(tl.float64)
    tail_c = tl.load(base + 3, mask=present, other=0.0).to(tl.float64)
    peak = tl.max(peak_c, 0)
    total = tl.sum(tl.where(present, total_c * tl.exp(peak_c - peak), 0.0), 0)
    has_tail = tail_c > 0
    shift = tl.max(tl.where(has_tail, shift_c, neg_inf), 0)
    shift = tl.where(shift == neg_inf, 0.0, shift)
    tail = tl.sum(tl.where(has_tail, tail_c * tl.exp(shift_c - shift), 0.0), 0)
    tl.store(out + row * 4, peak)
    tl.store(out + row * 4 + 1, tl.log(total))
    tl.store(out + row * 4 + 2, shift)
    tl.store(out + row * 4 + 3, tl.log(tail))


def topk_bits(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """[rows, ceil(vocab / 32)] int32 bitmask of the ids [rows, k] (the kernel's own, by atomic OR)."""
    rows, k = ids.shape
    bits = torch.zeros(rows, -(-vocab // 32), dtype=torch.int32, device=ids.device)
    if rows and k:
        ids = ids.contiguous()
        _set_bits[(rows,)](ids, bits, k, ids.stride(0), bits.stride(0), K_BLOCK=triton.next_power_of_2(k))
    return bits


def chunk_sums(logits: torch.Tensor, bits: torch.Tensor, chunk: int = CHUNK, warps: int = WARPS,
               steps: int = STEPS, words: bool = WORDS, lean: bool = LEAN) -> torch.Tensor:
    """[rows, programs, 4] float32 of _chunk_sums for logits [rows, vocab] (last dimension contiguous)
    and bits [rows, ceil(vocab / 32)] int32; `chunk` logits a step (a power of 2), `steps` chunks and
    `warps` warps a program, `words` and `lean` as _chunk_sums's WORDS and LEAN."""
    rows, vocab = logits.shape
    programs = -(-vocab // (chunk * steps))
    out = torch.empty(rows, programs, 4, dtype=torch.float32, device=logits.device)
    if rows:
        _chunk_sums[(rows, programs)](logits, bits, out, logits.stride(0), bits.stride(0), vocab=vocab, CHUNK=chunk,
                                      STEPS=steps, RESCUE=TAIL_RESCUE, WORDS=words, LEAN=lean,
                                      RESCUE_SUM=math.exp(TAIL_RESCUE), num_warps=warps)
    return out


def combine(parts: torch.Tensor) -> torch.Tensor:
    """[rows, 4] float64 of _combine for chunk sums [rows, chunks, 4] float32 (contiguous)."""
    rows, chunks, _ = parts.shape
    out = torch.empty(rows, 4, dtype=torch.float64, device=parts.device)
    if rows:
        _combine[(rows,)](parts, out, chunks, C_BLOCK=max(2, triton.next_power_of_2(chunks)))
    return out


def bits_for(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """topk_bits(ids, vocab), kept for the last KEEP_BITS id tensors whose bitmask is at most
    KEEP_BITS_BYTES: the search scores every candidate of a stage against the same reference rows, and
    on small stages (screens) the two launches that build the bitmask are a share of the host's time; a
    large stage builds its bitmask each time (~0.1 ms of GPU time at 64 × 512), so what stays held after
    a search is bounded. An entry holds its ids, so their memory cannot be reused while it is kept: the
    same address, shape, strides and version mean the same ids (an in-place write bumps the version)."""
    if ids.is_cuda and torch.cuda.is_current_stream_capturing():  # a CUDA graph builds its own (a kept one
        return topk_bits(ids, vocab)  # may be dropped while the graph still reads it)
    key = (ids.device, ids.data_ptr(), tuple(ids.shape), tuple(ids.stride()), ids._version, vocab)
    for _, known, bits in _BITS:
        if known == key:
            return bits
    bits = topk_bits(ids, vocab)
    if bits.numel() * bits.element_size() <= KEEP_BITS_BYTES:
        _BITS.append((ids, key, bits))
        del _BITS[:-KEEP_BITS]
    return bits


def row_sums(logits: torch.Tensor, ids: torch.Tensor, chunk: int | None = None, warps: int | None = None,
             steps: int | None = None, words: bool | None = None, lean: bool | None = None) -> torch.Tensor:
    """[rows, 4] float64 (peak, log Σ exp(x − peak), tail shift, log Σ_tail exp(x − tail shift)) for
    logits [rows, vocab] and top-k ids [rows, k]: the programs' sums combined in float64. A shape argument
    left None is this module's constant (CHUNK, WARPS, STEPS, WORDS, LEAN) as it is at the call, so a
    benchmark that sets them (kl_paths_real.py) reaches the kernel through the evaluator's KL."""
    given = (chunk, warps, steps, words, lean)
    shape = (value if value is not None else default
             for value, default in zip(given, (CHUNK, WARPS, STEPS, WORDS, LEAN), strict=True))
    return combine(chunk_sums(logits, bits_for(ids, logits.shape[-1]), *shape))
