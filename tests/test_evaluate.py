"""Perplexity windows and KL to a reference, on a tiny random Llama (hidden 64, 2 layers, vocab 256).

Every test runs in well under a second.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tiny
from oracles import kl_to_reference, next_token_logprobs

from evo.errors import EvoError
from evo.evaluate.perplexity import eval_windows, perplexity, tokenize_for_eval

torch.set_num_threads(1)  # tiny ops: threads only add OpenMP barriers, 30x slower on a busy CPU

VOCAB = tiny.VOCAB


@pytest.fixture(scope="module")
def tiny_model():
    return tiny.tiny_model("llama", tied=False, layers=2, positions=256)


def _stream(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=n, dtype=np.int64)


def _hand_nll(model, window: np.ndarray) -> tuple[float, int]:
    """Summed NLL of one window from a single forward, with an explicit log-softmax and gather."""
    ids = torch.from_numpy(window)[None]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logprobs = logits.log_softmax(-1)
    picked = logprobs[:-1].gather(1, ids[0, 1:, None])
    return float(-picked.sum()), window.size - 1


def test_perplexity_is_exp_of_hand_computed_mean_nll(tiny_model):
    seq_len = 32
    stream = _stream(5 * seq_len + 7)  # 5 whole windows and a partial tail
    result = perplexity(tiny_model, stream, seq_len=seq_len, batch_size=2)
    total, count = 0.0, 0
    for w in range(5):
        nll, n = _hand_nll(tiny_model, stream[w * seq_len : (w + 1) * seq_len])
        total += nll
        count += n
    assert result.windows == 5
    assert result.tokens_predicted == count == 5 * (seq_len - 1)
    assert result.mean_nll == pytest.approx(total / count, rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(total / count), rel=1e-5)
    # A random model is near uniform over the vocabulary.
    assert 0.5 * VOCAB < result.ppl < 2 * VOCAB


def test_perplexity_does_not_depend_on_batch_size_or_input_type(tiny_model):
    stream = _stream(4 * 16, seed=1)
    a = perplexity(tiny_model, stream, seq_len=16, batch_size=1)
    b = perplexity(tiny_model, torch.from_numpy(stream), seq_len=16, batch_size=3)
    assert a.mean_nll == pytest.approx(b.mean_nll, rel=1e-6)


def test_windows_are_non_overlapping_and_the_tail_is_dropped():
    stream = np.arange(100)
    windows = eval_windows(stream, seq_len=16)
    assert windows.shape == (6, 16)
    assert np.array_equal(windows.reshape(-1), np.arange(96))


def test_max_tokens_keeps_whole_windows(tiny_model):
    stream = _stream(10 * 16, seed=2)
    assert eval_windows(stream, seq_len=16, max_tokens=50).shape == (3, 16)
    assert eval_windows(stream, seq_len=16, max_tokens=10_000).shape == (10, 16)
    calls = []
    result = perplexity(
        tiny_model, stream, seq_len=16, max_tokens=50, batch_size=2, progress=lambda d, t: calls.append((d, t))
    )
    assert result.windows == 3 and result.tokens_predicted == 3 * 15
    assert calls == [(0, 3), (2, 3), (3, 3)]  # the step reports its start, then each batch
    first_three = perplexity(tiny_model, stream[:48], seq_len=16)
    assert result.mean_nll == pytest.approx(first_three.mean_nll, rel=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [{"seq_len": 1}, {"seq_len": 200}, {"seq_len": 16, "max_tokens": 8}, {"seq_len": 16, "batch_size": 0}],
)
def test_bad_arguments_raise_evo_error(tiny_model, kwargs):
    with pytest.raises(EvoError):
        perplexity(tiny_model, _stream(100), **kwargs)


def test_stream_must_be_one_dimensional(tiny_model):
    with pytest.raises(EvoError):
        perplexity(tiny_model, _stream(64).reshape(2, 32), seq_len=16)


def test_next_token_logprobs_are_normalised_float32_batches(tiny_model):
    ids = _stream(5 * 12, seed=3).reshape(5, 12)
    batches = list(next_token_logprobs(tiny_model, ids, batch_size=2))
    assert [tuple(b.shape) for b in batches] == [(2, 12, VOCAB), (2, 12, VOCAB), (1, 12, VOCAB)]
    assert all(b.dtype == torch.float32 for b in batches)
    total = torch.cat(batches).exp().sum(-1)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)


def test_next_token_logprobs_checks_arguments_before_iteration(tiny_model):
    with pytest.raises(EvoError):
        next_token_logprobs(tiny_model, _stream(12), batch_size=2)  # 1-D, not [n, L]
    with pytest.raises(EvoError):
        next_token_logprobs(tiny_model, _stream(12).reshape(1, 12), batch_size=0)


def test_kl_of_a_model_to_itself_is_zero_and_grows_when_a_weight_changes(tiny_model):
    ids = _stream(3 * 16, seed=4).reshape(3, 16)
    reference = list(next_token_logprobs(tiny_model, ids, batch_size=2))
    assert kl_to_reference(tiny_model, ids, reference) == pytest.approx(0.0, abs=1e-6)

    # A bfloat16 reference on the CPU is accepted (cast back to float32).
    assert kl_to_reference(tiny_model, ids, [r.to(torch.bfloat16) for r in reference]) < 1e-2

    weight = tiny_model.model.layers[0].mlp.down_proj.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.add_(torch.randn_like(weight) * weight.std() * 2)
        kl = kl_to_reference(tiny_model, ids, reference)
        # The same value computed by hand from the definition, KL(p ‖ q) = Σ p (log p − log q).
        candidate = torch.cat(list(next_token_logprobs(tiny_model, ids, batch_size=3))).double()
        p = torch.cat(reference).double()
        by_hand = float((p.exp() * (p - candidate)).sum(-1).mean())
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert kl > 1e-4
    assert kl == pytest.approx(by_hand, rel=1e-4)


def test_kl_rejects_a_reference_of_other_token_ids(tiny_model):
    ids = _stream(4 * 8, seed=5).reshape(4, 8)
    reference = list(next_token_logprobs(tiny_model, ids[:3], batch_size=2))
    with pytest.raises(EvoError):
        kl_to_reference(tiny_model, ids, reference)
    with pytest.raises(EvoError):
        kl_to_reference(tiny_model, ids, [])


class _WordTokenizer:
    """Stands in for a HF tokenizer: one id per word, and a BOS when special tokens are added."""

    def __call__(self, text, add_special_tokens=True, verbose=True):
        ids = [len(word) for word in text.split()]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


def test_tokenize_for_eval_tokenizes_the_whole_text_once_with_default_special_tokens():
    ids = tokenize_for_eval(_WordTokenizer(), "a bb ccc\n\ndddd")
    assert ids.dtype == np.int64
    assert ids.tolist() == [1, 1, 2, 3, 4]
    with pytest.raises(EvoError):
        tokenize_for_eval(_WordTokenizer(), "  \n")
