"""The fast forward + KL path (evaluate/fastforward.py): its KL equals the old path's (micro-batches
of 4 through forward_batches, KL row by row, a host sync per row) to 1e-5 at every stage shape;
torch.compile falls back to the eager forward on the CPU and when compiling fails, with the same
numbers; an unknown compile mode is an EvoError."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evo.compress import TensorSetting
from evo.compress.config import CompressionConfig, LayerConfig
from evo.constants import FINAL_STAGE, SCREEN_STAGE
from evo.errors import EvoError
from evo.evaluate.evaluator import Evaluator, FitnessConfig
from evo.evaluate.fastforward import FastForward
from evo.evaluate.forward import forward_batches
from evo.evaluate.metrics import exact_kl, topk_kl, topk_kl_reference, topk_kl_sum, topk_kl_sum_reference
from evo.evaluate.reference import DenseReference
from evo.modelio import load_model

TOKENS = np.random.default_rng(5).integers(3, 259, size=(7, 24))
CONFIGS = (
    CompressionConfig(default=TensorSetting(bits=3, group_size=32),
                      layers={0: LayerConfig(drop="mlp", attention=TensorSetting(bits=2, group_size=32))}),
    CompressionConfig(default=TensorSetting(bits=4, group_size=32), embedding=TensorSetting(bits=6)),
)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    directory = tiny_model_dir("llama")
    loaded = load_model(str(directory))
    reference = DenseReference.compute(loaded.model, TOKENS, top_k=8, tail_samples=4)
    return directory, loaded.info, reference


def _evaluator(tiny, **fitness):
    directory, info, reference = tiny
    config = FitnessConfig(metric="kl", screen_sequences=3, screen_tokens=11, top_k=8, tail_samples=4, **fitness)
    return Evaluator(load_model(str(directory)).model, info, TOKENS, config, reference)


@torch.no_grad()
def _old_path_kl(evaluator, reference, sequences, tokens):
    """The evaluator before the fast path: forward_batches 4 sequences at a time from CPU ids,
    the old KL (topk_kl_reference: float32 log-softmax copy) of one sequence at a time, its sum read
    by the host each time."""
    total = 0.0
    ids = torch.as_tensor(TOKENS[:sequences, :tokens], dtype=torch.long)
    for start, batch, logits in forward_batches(evaluator.model, ids, 4):
        for row in range(batch.shape[0]):
            seq = start + row
            kl = topk_kl_reference(logits[row], reference.topk_ids[seq, :tokens].long(),
                         reference.topk_logprobs[seq, :tokens].float(), reference.tail_logprob[seq, :tokens].float(),
                         reference.tail_ids[seq, :tokens].long(), reference.tail_logprobs[seq, :tokens].float())
            total += float(kl.double().sum())
    return total / (sequences * tokens)


@pytest.mark.parametrize("kl_chunk", [0, 7, 4096])  # whole batch; chunks that do not divide the tokens; one chunk
@pytest.mark.parametrize("stage", [SCREEN_STAGE, 3, FINAL_STAGE])
def test_fast_kl_equals_the_old_path(tiny, stage, kl_chunk):
    evaluator = _evaluator(tiny, kl_chunk=kl_chunk)
    evaluator.stage_shapes = {3: (5, 17)}  # a middle stage of a schedule: neither the screen nor everything
    sequences, tokens = evaluator.stage_shape(stage)
    assert evaluator.micro_batch(sequences, tokens) == sequences  # the whole stage in one forward
    for config in CONFIGS:
        fast = evaluator.evaluate(config, stage)
        old = _old_path_kl(evaluator, tiny[2], sequences, tokens)  # on the model evaluate() materialised
        assert fast > 0
        assert fast == pytest.approx(old, rel=1e-5, abs=OLD_ROUNDING / 10)  # the old KL's float32 rounding


def test_kl_chunks_fall_back_when_logits_are_not_the_head_of_the_body(tiny, monkeypatch):
    whole = _evaluator(tiny)
    expected = whole.evaluate(CONFIGS[1])
    evaluator = _evaluator(tiny, kl_chunk=5)
    head = evaluator.model.get_output_embeddings()
    monkeypatch.setattr(evaluator.model, "get_output_embeddings", lambda: (lambda hidden: 2 * head(hidden)))
    assert evaluator.evaluate(CONFIGS[1]) == pytest.approx(expected, rel=1e-6)
    assert evaluator.forward.kl_chunk == 0 and "kl_chunk off" in evaluator.forward.fallback


def test_negative_kl_chunk_is_refused():
    with pytest.raises(EvoError, match="kl_chunk"):
        FitnessConfig(kl_chunk=-1)


def test_topk_kl_sum_is_the_summed_estimate(tiny):
    reference = tiny[2]
    logits = torch.randn(2, 24, tiny[1].vocab_size)
    parts = (reference.topk_ids[:2].long(), reference.topk_logprobs[:2], reference.tail_logprob[:2],
             reference.tail_ids[:2].long(), reference.tail_logprobs[:2])
    summed = topk_kl_sum(logits, *parts)
    assert summed.dtype == torch.float64 and summed.ndim == 0
    assert float(summed) == pytest.approx(float(topk_kl(logits, *parts).double().sum()), rel=1e-12)


def _reference_of(dense: torch.Tensor, k: int, m: int, seed: int = 0):
    """DenseReference.compute's top-k, tail mass and tail samples for dense logits [..., vocab]."""
    log_p = torch.log_softmax(dense.double(), dim=-1)
    values, ids = log_p.topk(k, dim=-1)
    rest = log_p.scatter(-1, ids, float("-inf"))
    tail = torch.logsumexp(rest, dim=-1)
    if not m:
        return ids, values.float(), tail.float()
    inside = torch.exp(rest - tail[..., None]).reshape(-1, dense.shape[-1])
    samples = torch.multinomial(inside, m, replacement=True, generator=torch.Generator().manual_seed(seed))
    samples = samples.reshape(*dense.shape[:-1], m)
    return ids, values.float(), tail.float(), samples, rest.gather(-1, samples).float()


def _logits(shape, seed, *, spread=3.0, lift=0.0, k=0):
    """Random logits; lift raises the first k tokens of the vocabulary by `lift` (a tail of tiny mass)."""
    logits = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * spread
    if lift:
        logits[..., :k] += lift
    return logits


def _float64_kl(candidate, reference):
    """topk_kl's estimate with q's log-probabilities in float64: the truth both versions round."""
    from evo.evaluate.metrics import _kl_from_parts

    log_q = torch.log_softmax(candidate.double(), dim=-1)
    ids = reference[0]
    log_q_tail = torch.logsumexp(log_q.scatter(-1, ids, float("-inf")), dim=-1)
    sampled = log_q.gather(-1, reference[3]) if len(reference) > 3 else None
    return _kl_from_parts(log_q.gather(-1, ids), log_q_tail, sampled, *reference[1:3],
                          reference[4] if len(reference) > 4 else None)


# The old KL rounds log q to float32 (an ulp is 5e-7 at log q ≈ −8): on a KL of 1e-3 nats per position
# that is a few 1e-5 of relative error, which the new one (log q in float64) does not have. So the new
# one is held to the float64 truth at 1e-6, and to the old one at 1e-5 relative plus float32's rounding.
OLD_ROUNDING = 1e-6  # nats per position


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("samples", [0, 5])
@pytest.mark.parametrize("case", ["random", "whole_vocabulary", "tiny_tail", "vanishing_tail"])
def test_fused_kl_equals_the_old_kl(dtype, samples, case):
    vocab, k = 300, 24
    if case == "whole_vocabulary":
        k, samples = vocab, 0  # an empty tail: nothing to sample
    # tiny_tail: the tail's mass ≈ 276 · e^-30 ≈ 3e-11 of p and q; vanishing_tail: ≈ e^-80, below float32's
    # exp(x − peak) (the eager path redoes those rows with the tail's own shift)
    lift = {"tiny_tail": 30.0, "vanishing_tail": 80.0}.get(case, 0.0)
    dense = _logits((3, 11, vocab), 1, lift=lift, k=k)
    candidate = (dense + _logits((3, 11, vocab), 2, spread=0.3)).to(dtype)
    reference = _reference_of(dense, k, samples)
    if lift:
        assert float(reference[2].exp().max()) < 1e-9
    new, old = topk_kl(candidate, *reference), topk_kl_reference(candidate, *reference)
    assert new.dtype == old.dtype == torch.float32 and new.shape == old.shape == (3, 11)
    torch.testing.assert_close(new, _float64_kl(candidate, reference), rtol=1e-6, atol=5e-7)  # float32 exp and sums
    torch.testing.assert_close(new, old, rtol=1e-5, atol=OLD_ROUNDING)
    total, total_old = topk_kl_sum(candidate, *reference), topk_kl_sum_reference(candidate, *reference)
    assert total.dtype == torch.float64 and total.ndim == 0
    assert float(total) == pytest.approx(float(total_old), rel=1e-5, abs=OLD_ROUNDING * new.numel())
    if case == "whole_vocabulary":  # exact when k covers the vocabulary
        torch.testing.assert_close(new, exact_kl(dense, candidate), rtol=1e-4, atol=1e-6)


def test_fused_kl_sees_the_tail_of_q_when_the_top_k_hold_nearly_all_of_p():
    """q puts real mass where p's tail is ~1e-13: the tail term must come from q's own tail, not 1 − Σ q."""
    vocab, k = 200, 10
    dense = _logits((2, 5, vocab), 3, lift=40.0, k=k)
    candidate = _logits((2, 5, vocab), 4)  # q's mass mostly outside p's top k
    reference = _reference_of(dense, k, 3)
    new = topk_kl(candidate, *reference)
    torch.testing.assert_close(new, _float64_kl(candidate, reference), rtol=1e-6, atol=0)
    torch.testing.assert_close(new, topk_kl_reference(candidate, *reference), rtol=1e-5, atol=0)


def test_fused_kl_in_eager_chunks_equals_one_chunk(monkeypatch):
    import evo.evaluate.metrics as metrics

    dense = _logits((4, 9, 150), 5)
    reference = _reference_of(dense, 12, 4)
    candidate = dense + _logits((4, 9, 150), 6, spread=0.5)
    whole = topk_kl(candidate, *reference)
    monkeypatch.setattr(metrics, "KL_EAGER_CHUNK", 150 * 5)  # 5 rows per chunk: 36 rows in 8 chunks, the last short
    assert torch.equal(topk_kl(candidate, *reference), whole)


def test_compile_falls_back_on_cpu_without_error(tiny):
    eager = _evaluator(tiny)
    for mode in ("default", "reduce-overhead"):
        asked = _evaluator(tiny, compile=mode)
        assert not asked.forward.compiled and "CUDA only" in asked.forward.fallback
        assert asked.evaluate(CONFIGS[0]) == eager.evaluate(CONFIGS[0])


def test_a_failing_compile_falls_back_to_the_eager_forward(tiny, monkeypatch):
    model = load_model(str(tiny[0])).model.eval()
    ids = torch.as_tensor(TOKENS[:2], dtype=torch.long)
    expected = model(input_ids=ids, use_cache=False).logits

    def broken(function, **_):
        def run(*args, **kwargs):
            raise RuntimeError("inductor: no C compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    forward = FastForward(model, "default", device=torch.device("cuda"))  # as if on a GPU: compiling is tried
    assert forward.compiled
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        logits = forward.logits(ids)
    assert torch.equal(logits, expected)
    assert not forward.compiled and "no C compiler" in forward.fallback


def test_unknown_compile_mode_is_refused():
    with pytest.raises(EvoError, match="compile mode"):
        FitnessConfig(compile="fast")


def test_genomes_with_dropped_blocks_bypass_the_compiled_forward(tiny, monkeypatch):
    calls = []

    def counting(function, **_):
        def run(*args, **kwargs):
            calls.append(function.__name__)
            return function(*args, **kwargs)

        return run

    monkeypatch.setattr(torch, "compile", counting)
    evaluator = _evaluator(tiny)
    expected = [evaluator.evaluate(config) for config in CONFIGS]
    evaluator.forward = FastForward(evaluator.model, "default", device=torch.device("cuda"))  # compiled, as on a GPU
    dropping, plain = CONFIGS  # CONFIGS[0] drops layer 0's MLP
    assert evaluator.evaluate(dropping) == pytest.approx(expected[0], rel=1e-6)
    assert "_eager_forward" not in calls and "topk_kl_sum" in calls  # swapped modules: eager forward, compiled KL
    calls.clear()
    assert evaluator.evaluate(plain) == pytest.approx(expected[1], rel=1e-6)
    assert "_eager_forward" in calls


def test_search_samples_default_depends_on_the_device_and_is_stated():
    from evo.cli import build_parser
    from evo.cli.search import CPU_SAMPLES, CUDA_SAMPLES, _search_spec

    parser = build_parser()
    cpu = parser.parse_args(["search", "--budget-mb", "70", "--device", "cpu"])
    assert _search_spec(cpu).samples == CPU_SAMPLES < CUDA_SAMPLES
    given = parser.parse_args(["search", "--budget-mb", "70", "--device", "cpu", "--samples", "16"])
    assert _search_spec(given).samples == 16
    import io
    from contextlib import redirect_stdout

    text = io.StringIO()
    with redirect_stdout(text), pytest.raises(SystemExit):
        parser.parse_args(["search", "--help"])
    assert f"{CUDA_SAMPLES} on CUDA, {CPU_SAMPLES} on the CPU" in " ".join(text.getvalue().split())


def test_with_kl_shares_the_forward_and_swaps_the_kl_reduction(tiny):
    evaluator = _evaluator(tiny)
    evaluator.materialise(CONFIGS[1])  # a candidate, not the dense model (whose KL is rounding noise)
    forward = evaluator.forward
    old = forward.with_kl(topk_kl_sum_reference)
    assert old.kl_function is topk_kl_sum_reference and forward.kl_function is topk_kl_sum
    assert not old.compiled and old.model is forward.model
    ids = evaluator._device_ids[:3, :11]
    rows = [part[:3, :11] for part in evaluator._reference_rows]
    logits = forward.logits(ids)
    assert torch.equal(old.logits(ids), logits)
    assert float(old.kl_sum_of(ids, *rows)) == float(topk_kl_sum_reference(logits, *rows))
    assert float(forward.kl_sum_of(ids, *rows)) == pytest.approx(float(old.kl_sum_of(ids, *rows)), rel=1e-5,
                                                             abs=OLD_ROUNDING * 3 * 11)
