"""Quality metrics on logits: KL divergence to a reference distribution (exact from full logits,
or from a compact top-k reference with sampled tail) and the summed next-token NLL perplexity
is built from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    """
    log_q = torch.log_softmax(logits.float(), dim=-1)
    ids = topk_ids.long()
    log_q_top = log_q.gather(-1, ids)
    log_q_sampled = log_q.gather(-1, tail_ids.long()) if tail_ids is not None and tail_ids.shape[-1] else None
    log_q.scatter_(-1, ids, float("-inf"))  # log_q is ours: reuse it instead of a second vocab-sized copy
    log_q_tail = torch.logsumexp(log_q, dim=-1)
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
        tail = tail + (log_p_tail.double().exp() * inside).float()
    return kl + torch.where(empty_tail, torch.zeros_like(tail), tail)


def topk_kl_sum(
    logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_logprob: torch.Tensor,
    tail_ids: torch.Tensor | None = None,
    tail_logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ topk_kl over every position of a batch, as a float64 0-d tensor on the logits' device:
    the evaluator's whole-batch reduction, read by the host once per evaluation. The same
    estimate as topk_kl (it is topk_kl, summed in float64), written as one function so that
    torch.compile can fuse the float32 log-softmax, the gathers and the tail's log-sum-exp."""
    return topk_kl(logits, topk_ids, topk_logprobs, tail_logprob, tail_ids, tail_logprobs).double().sum()
