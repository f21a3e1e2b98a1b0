"""The fast evaluator: levels stay resident (a second evaluation recomputes nothing), the cache is
sized from free memory, and the whole-batch KL with one host sync equals the old row-by-row KL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evo.compress import TensorSetting
from evo.compress.config import CompressionConfig, LayerConfig
from evo.constants import FINAL_STAGE, SCREEN_STAGE
from evo.evaluate.evaluator import Evaluator, FitnessConfig
from evo.evaluate.metrics import topk_kl
from evo.evaluate.reference import DenseReference
from evo.evaluate.resident import cache_budget
from evo.modelio import load_model

TOKENS = np.random.default_rng(3).integers(3, 259, size=(6, 20))
A = CompressionConfig(default=TensorSetting(bits=3, group_size=32),
                      layers={1: LayerConfig(drop="attention", mlp=TensorSetting(bits=2, group_size=32))})
B = CompressionConfig(default=TensorSetting(bits=4, group_size=32), embedding=TensorSetting(bits=6))


@pytest.fixture(scope="module")
def llama(tiny_model_dir):
    directory = tiny_model_dir("llama")
    loaded = load_model(str(directory))
    reference = DenseReference.compute(loaded.model, TOKENS, top_k=8)
    return directory, loaded.info, reference


def _evaluator(directory, info, reference, **kwargs):
    fitness = FitnessConfig(metric="kl", screen_sequences=2, screen_tokens=10, top_k=8,
                            batch_size=kwargs.pop("batch_size", None))
    return Evaluator(load_model(str(directory)).model, info, TOKENS, fitness, reference, **kwargs)


def test_cache_is_sized_from_free_memory():
    budget = cache_budget("cpu")
    assert budget > 0 and budget != 2 << 30


def test_second_evaluation_recomputes_nothing(llama):
    evaluator = _evaluator(*llama)  # cache sized from free memory
    first = [evaluator.evaluate(A), evaluator.evaluate(B)]
    compressed = evaluator.stats.compressed
    assert compressed > 0
    again = [evaluator.evaluate(A), evaluator.evaluate(B), evaluator.evaluate(A, SCREEN_STAGE)]
    assert again[:2] == first
    assert evaluator.stats.compressed == compressed and evaluator.stats.recomputed == 0
    # the counter does count: without a cache every swap back is a recomputation
    uncached = _evaluator(*llama, cache_bytes=0)
    uncached.evaluate(A), uncached.evaluate(B), uncached.evaluate(A)
    assert uncached.stats.recomputed > 0


def _row_by_row_kl(evaluator, config, reference):
    """The old evaluator's reduction: one sequence per forward, a host sync per sequence."""
    evaluator.materialise(config)
    total = 0.0
    ids = torch.as_tensor(TOKENS, dtype=torch.long)
    m = reference.tail_ids.shape[-1]
    for row in range(ids.shape[0]):
        logits = evaluator.model(input_ids=ids[row:row + 1], use_cache=False).logits[0]
        kl = topk_kl(logits, reference.topk_ids[row].long(), reference.topk_logprobs[row].float(),
                     reference.tail_logprob[row].float(), reference.tail_ids[row, :, :m].long(),
                     reference.tail_logprobs[row, :, :m].float())
        total += float(kl.double().sum())
    return total / ids.numel()


@pytest.mark.parametrize("batch_size", [None, 4])
def test_batched_kl_equals_the_old_row_by_row_kl(llama, batch_size):
    directory, info, reference = llama
    evaluator = _evaluator(directory, info, reference, batch_size=batch_size)
    assert evaluator.micro_batch(*TOKENS.shape) == (TOKENS.shape[0] if batch_size is None else 4)
    for config in (A, B):
        fast = evaluator.evaluate(config, FINAL_STAGE)
        with torch.no_grad():
            old = _row_by_row_kl(evaluator, config, reference)
        assert fast > 0
        assert fast == pytest.approx(old, rel=1e-5, abs=1e-7)


def test_compile_flag_is_ignored_on_cpu(llama):
    evaluator = _evaluator(*llama, compile=True)
    assert evaluator.fitness.compile == "default"
    assert not evaluator.forward.compiled and "CUDA only" in evaluator.forward.fallback
