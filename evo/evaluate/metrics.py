"""Quality metrics on logits: KL divergence to a reference distribution (exact from full logits,
or from a compact top-k reference with sampled tail) and the summed next-token NLL perplexity
is built from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from evo.evaluate import kl_sums

ROW_SUMS = ("auto", "torch", "full")  # topk_kl's row sums: the one-pass kernel where it runs, or torch ops always,
# or the kernel with LEAN off (four block reductions a chunk, as before session 30) where it runs: benchmarks
KL_EAGER_CHUNK = 1 << 24  # logits per eager chunk of topk_kl on a CPU: its float32 temporaries stay ≈ 64 MB each
KL_EAGER_CHUNK_CUDA = 1 << 28  # on a GPU (≈ 1 GB each): few chunks, few launches and syncs
TAIL_UNDERFLOW = 1e-30  # an eager tail Σ below this (relative to the peak) is recomputed with its own shift


def nll_sum(logits: torch.Tensor, token_ids: torch.Tensor) -> float:
    """Summed negative log-likelihood (nats) of token_ids[1:] under logits[:-1] for one sequence:
    logits [L, vocab] of any dtype (reduced in float32), token_ids [L]."""
    return float(F.cross_entropy(logits[:-1].float(), token_ids[1:], reduction="sum"))


def exact_kl(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) in nats at every position, p = softmax(reference_logits), q = softmax(logits),
    both [..., vocab]; float32 [...]."""
    log_p = torch.log_softmax(reference_logits.float(), dim=-1)
    log_q = torch.log_softmax(logits.float(), dim=-1)
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


def topk_kl(
    logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_logprob: torch.Tensor,
    tail_ids: torch.Tensor | None = None,
    tail_logprobs: torch.Tensor | None = None,
    *,
    row_sums: str = "auto",
) -> torch.Tensor:
    """KL(p ‖ q) at every position from p's top-k tokens, its tail mass and (optionally) tokens
    sampled from its tail; q = softmax(logits). float32 [...] for logits [..., vocab], top-k
    tensors [..., k], tail_logprob [...], tail samples [..., m].

    By the chain rule KL(p ‖ q) = KL(p̄ ‖ q̄) + p_tail · KL(p̃ ‖ q̃), where p̄, q̄ are coarse-grained
    to the k tokens plus one tail outcome and p̃, q̃ are the distributions inside the tail.
    Without samples only the first term is returned: a lower bound of the KL (coarse-graining
    never increases it), exact when k covers the vocabulary. With m samples i ~ p̃ the second
    term is estimated without bias as p_tail · mean(ρ − 1 − log ρ), ρ = q̃_i / p̃_i: E[ρ] = 1
    makes it unbiased, and every term is ≥ 0 and ≈ (log ρ)²/2, which keeps the variance small
    except where q lifts a token p finds rare far above p (terms ≈ ρ); a larger k tames that.
    q's tail mass is a log-sum-exp over the tokens outside the top k, not 1 − Σ q_i, so it stays
    accurate when the top k hold nearly all the mass.

    How it reads the logits (the estimate of topk_kl_reference, with less rounding and less memory
    traffic): no log-softmax copy is made. q's normaliser and the tail's log-sum-exp come from
    reductions over the logits upcast to float32 (shifted by the row's peak, the tail's by its own
    peak, as logsumexp does); the top-k and sampled logits are gathered from the logits themselves,
    and log q = (logit − peak) − log Σ is formed in float64, so log q carries no float32 rounding (the
    reference's did: a few 1e-5 of a KL of 1e-3 nats per position). Under torch.compile
    (_fused_sums) a boolean mask of the top-k ids (1 byte per logit, the only vocabulary-sized
    tensor written) lets the upcast, both sums (accumulated in float64) and the peaks fuse into one
    pass over the logits. Eagerly (_eager_sums, every op a kernel) one float32 chunk exp(x − peak)
    gives Σ and, with 0 scattered at the top-k ids, the tail's Σ; the rows go KL_EAGER_CHUNK(_CUDA)
    logits at a time, so the temporaries stay bounded. On CUDA with Triton (row_sums "auto"), both
    ways use instead kl_sums.topk_row_sums: one pass over the logits with the top k as a bitmask, the
    same four sums (row_sums "torch" keeps the torch passes, "full" runs the kernel with LEAN off:
    benchmarks compare them).
    """
    if row_sums not in ROW_SUMS:
        raise ValueError(f"row_sums={row_sums!r}: use one of {ROW_SUMS}")
    vocab = logits.shape[-1]
    lead = logits.shape[:-1]
    flat = logits.reshape(-1, vocab)
    ids = topk_ids.reshape(-1, topk_ids.shape[-1]).long()
    sampled = tail_ids is not None and tail_ids.shape[-1] > 0
    samples = tail_ids.reshape(-1, tail_ids.shape[-1]).long() if sampled else None
    rows = flat.shape[0]
    chunk = KL_EAGER_CHUNK_CUDA if logits.is_cuda else KL_EAGER_CHUNK
    step = rows if torch.compiler.is_compiling() else max(1, chunk // max(vocab, 1))
    kernel = row_sums != "torch" and kl_sums.available(flat)
    lean = False if row_sums == "full" else None
    if kernel:
        step = max(rows, 1)  # one pass over the rows: no float32 copies to bound
    parts = [_log_q_parts(flat[r:r + step], ids[r:r + step], samples[r:r + step] if sampled else None, kernel, lean)
             for r in range(0, max(rows, 1), step)]
    log_q_top, log_q_tail = (torch.cat([part[i] for part in parts]) for i in (0, 2))
    log_q_sampled = torch.cat([part[1] for part in parts]).reshape(*lead, -1) if sampled else None
    return _kl_from_parts(log_q_top.reshape(*lead, -1), log_q_tail.reshape(lead), log_q_sampled,
                          topk_logprobs, tail_logprob, tail_logprobs)


def _log_q_parts(logits: torch.Tensor, ids: torch.Tensor, samples: torch.Tensor | None, kernel: bool = False,
                 lean: bool | None = None):
    """(log q of the top-k ids, of the sampled ids or None, of the tail), float64, for logits
    [rows, vocab]: see topk_kl's docstring for the passes (lean: kl_sums.topk_row_sums's)."""
    if kernel:
        sums = kl_sums.topk_row_sums(logits, ids, lean)
        peak, log_sum, tail_peak, log_tail = (sums[:, i:i + 1] for i in range(4))
    elif torch.compiler.is_compiling():
        peak, log_sum, tail_peak, log_tail = _fused_sums(logits, ids)
    else:
        peak, log_sum, tail_peak, log_tail = _eager_sums(logits, ids)
    peak, log_sum = peak.double(), log_sum.double()
    log_q_top = (logits.gather(-1, ids).double() - peak) - log_sum
    log_q_sampled = (logits.gather(-1, samples).double() - peak) - log_sum if samples is not None else None
    return log_q_top, log_q_sampled, (log_tail.double() + (tail_peak.double() - peak) - log_sum).squeeze(-1)


def _fused_sums(logits: torch.Tensor, ids: torch.Tensor):
    """(peak, log Σ exp(x − peak), the tail's peak, log Σ_tail exp(x − tail peak)), each [rows, 1], in
    a functional form Inductor fuses into one kernel over the logits (the upcast included): the
    boolean mask is the only vocabulary-sized tensor written; the sums accumulate in float64."""
    x = logits.float()
    peak = x.amax(-1, keepdim=True)
    log_sum = torch.log(torch.exp(x - peak).sum(-1, keepdim=True, dtype=torch.float64))
    top = torch.zeros(x.shape, dtype=torch.bool, device=x.device).scatter_(-1, ids, True)
    outside = x.masked_fill(top, float("-inf"))
    tail_peak = _finite(outside.amax(-1, keepdim=True))
    log_tail = torch.log(torch.exp(outside - tail_peak).sum(-1, keepdim=True, dtype=torch.float64))
    return peak, log_sum, tail_peak, log_tail


def _eager_sums(logits: torch.Tensor, ids: torch.Tensor):
    """_fused_sums eagerly, where every op is a kernel of its own: one float32 chunk e = exp(x − peak)
    gives Σ, then with 0 scattered at the top-k ids the tail's Σ under the same shift (float32 sums).
    Rows whose tail underflows that shift (tail mass below ~1e-30 of the peak's) are redone with the
    tail's own peak, as logsumexp would."""
    x = logits.float()
    peak = x.amax(-1, keepdim=True)
    e = (x - peak).exp_()
    log_sum = torch.log(e.sum(-1, keepdim=True).double())
    tail = e.scatter_(-1, ids, 0.0).sum(-1, keepdim=True)
    tail_peak = peak.clone()
    low = (tail < TAIL_UNDERFLOW).squeeze(-1).nonzero().squeeze(-1)
    if low.numel():
        outside = x[low].scatter_(-1, ids[low], float("-inf"))
        tail_peak[low] = _finite(outside.amax(-1, keepdim=True))
        tail[low] = outside.sub_(tail_peak[low]).exp_().sum(-1, keepdim=True)
    return peak, log_sum, tail_peak, torch.log(tail.double())


def _finite(peak: torch.Tensor) -> torch.Tensor:
    """An empty tail (k = vocab) has peak −inf: shift by 0 instead (Σ = 0, log = −inf, as logsumexp gives)."""
    return torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))


def _kl_from_parts(log_q_top, log_q_tail, log_q_sampled, topk_logprobs, tail_logprob, tail_logprobs):
    """topk_kl's formula from q's log-probabilities of the top-k ids, of its tail and of the samples
    (float32 or float64: the arithmetic follows them), float32 [...]."""
    log_p_top = topk_logprobs.float()
    log_p_tail = tail_logprob.float()
    kl = (log_p_top.exp() * (log_p_top - log_q_top)).sum(-1)
    empty_tail = torch.isneginf(log_p_tail)  # k = vocab: 0 · (−inf − x) would be nan
    tail = log_p_tail.exp() * (log_p_tail - log_q_tail)
    if log_q_sampled is not None:
        # log ρ in float64: ρ − 1 − log ρ cancels to (log ρ)²/2, tiny for a good candidate.
        log_rho = (log_q_sampled.double() - log_q_tail.double()[..., None]) - (
            tail_logprobs.double() - log_p_tail.double()[..., None]
        )
        inside = (torch.expm1(log_rho) - log_rho).mean(-1)
        tail = tail + (log_p_tail.double().exp() * inside).to(tail.dtype)
    return (kl + torch.where(empty_tail, torch.zeros_like(tail), tail)).float()


def topk_kl_reference(
    logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_logprob: torch.Tensor,
    tail_ids: torch.Tensor | None = None,
    tail_logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """topk_kl as it was computed before session 24, kept as the reference its tests and the
    search_throughput benchmark's kl_old variant compare against: a float32 log-softmax copy of the
    logits, gathers from it, −inf scattered into it and its log-sum-exp read again for the tail."""
    log_q = torch.log_softmax(logits.float(), dim=-1)
    ids = topk_ids.long()
    log_q_top = log_q.gather(-1, ids)
    log_q_sampled = log_q.gather(-1, tail_ids.long()) if tail_ids is not None and tail_ids.shape[-1] else None
    log_q.scatter_(-1, ids, float("-inf"))  # log_q is ours: reuse it instead of a second vocab-sized copy
    log_q_tail = torch.logsumexp(log_q, dim=-1)
    return _kl_from_parts(log_q_top, log_q_tail, log_q_sampled, topk_logprobs, tail_logprob, tail_logprobs)


def topk_kl_sum(
    logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_logprob: torch.Tensor,
    tail_ids: torch.Tensor | None = None,
    tail_logprobs: torch.Tensor | None = None,
    *,
    row_sums: str = "auto",
) -> torch.Tensor:
    """Σ topk_kl over every position of a batch, as a float64 0-d tensor on the logits' device:
    the evaluator's whole-batch reduction, read by the host once per evaluation. The same
    estimate as topk_kl (it is topk_kl, summed in float64), written as one function so that
    torch.compile can fuse the upcast, the normaliser's and the tail's reductions and the gathers."""
    return topk_kl(logits, topk_ids, topk_logprobs, tail_logprob, tail_ids, tail_logprobs,
                   row_sums=row_sums).double().sum()


def topk_kl_sum_reference(
    logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_logprob: torch.Tensor,
    tail_ids: torch.Tensor | None = None,
    tail_logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """topk_kl_sum through topk_kl_reference (the pre-session-24 passes), for tests and benchmarks."""
    return topk_kl_reference(logits, topk_ids, topk_logprobs, tail_logprob, tail_ids, tail_logprobs).double().sum()
