"""Fitness: the resident model materialises a config exactly as compress_model does (same
perplexity, same KL), swaps in and out without residue, and the top-k KL bounds the exact KL."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from oracles import kl_to_reference, next_token_logprobs

from evo.compress import TensorSetting
from evo.compress.config import CompressionConfig, LayerConfig
from evo.compress.model import compress_model
from evo.compress.structure import apply_block_drop, drop_layers
from evo.constants import FINAL_STAGE, SCREEN_STAGE
from evo.errors import EvoError
from evo.evaluate.evaluator import Evaluator, FitnessConfig
from evo.evaluate.metrics import exact_kl, topk_kl
from evo.evaluate.perplexity import perplexity
from evo.evaluate.reference import DenseReference
from evo.evaluate.stats import collect_activation_stats
from evo.modelio import describe_model, load_model

TOKENS = np.random.default_rng(1).integers(3, 259, size=(4, 24))
PPL = FitnessConfig(metric="ppl", screen_sequences=2, screen_tokens=12, batch_size=3)
KL = FitnessConfig(metric="kl", screen_sequences=2, screen_tokens=12, top_k=8, batch_size=3)


def _configs() -> dict[str, CompressionConfig]:
    return {
        "uniform3": CompressionConfig(default=TensorSetting(bits=3, group_size=32)),
        "uniform4": CompressionConfig(default=TensorSetting(bits=4, group_size=64), embedding=TensorSetting(bits=8)),
        "drops": CompressionConfig(
            default=TensorSetting(bits=4, group_size=32),
            layers={
                0: LayerConfig(mlp=TensorSetting(bits=2, sparsity=0.5, prune_criterion="wanda")),
                1: LayerConfig(drop="layer"),
                2: LayerConfig(drop="attention"),
                3: LayerConfig(drop="mlp", attention=TensorSetting(bits=6, group_size=None, symmetric=True)),
            },
        ),
    }


@pytest.fixture(scope="module")
def llama_dir(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def stats(llama_dir):
    loaded = load_model(str(llama_dir))
    return collect_activation_stats(loaded.model, loaded.info, TOKENS)


def _compressed(llama_dir, config, stats):
    fresh = load_model(str(llama_dir))
    compress_model(fresh, None, config, stats=stats, measure=False)
    return fresh.model


def _logits(model, ids=TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(ids), use_cache=False).logits


def test_zeroing_both_blocks_is_removing_the_layer(tiny_llama):
    info = describe_model(tiny_llama)
    removed = copy.deepcopy(tiny_llama)
    apply_block_drop(tiny_llama, info.layers[1], "attention")
    apply_block_drop(tiny_llama, info.layers[1], "mlp")
    drop_layers(removed, info, [1])
    assert len(removed.model.layers) == 3
    assert torch.equal(_logits(tiny_llama), _logits(removed))


@pytest.mark.parametrize("name", list(_configs()))
def test_perplexity_equals_compress_model_then_evaluate(llama_dir, stats, name):
    config = _configs()[name]
    loaded = load_model(str(llama_dir))
    evaluator = Evaluator(loaded.model, loaded.info, TOKENS, PPL, stats=stats)
    got = evaluator.evaluate(config, FINAL_STAGE)
    compressed = _compressed(llama_dir, config, stats)
    expected = perplexity(compressed, TOKENS.reshape(-1), seq_len=TOKENS.shape[1]).ppl
    assert got == pytest.approx(expected, rel=1e-5)
    # The materialised model is the compressed one, logits and all.
    torch.testing.assert_close(_logits(loaded.model), _logits(compressed), rtol=1e-5, atol=1e-5)


def test_swapping_back_and_forth_leaves_no_residue(llama_dir, stats):
    loaded = load_model(str(llama_dir))
    dense_logits = _logits(loaded.model)
    reference = DenseReference.compute(loaded.model, TOKENS, top_k=KL.top_k)
    evaluator = Evaluator(loaded.model, loaded.info, TOKENS, KL, reference, stats=stats)
    configs = _configs()
    order = ["uniform3", "drops", "uniform4", "uniform3", "drops", "uniform4", "drops"]
    seen: dict[tuple[str, int], float] = {}
    for name in order:
        for stage in (SCREEN_STAGE, FINAL_STAGE):
            value = evaluator.evaluate(configs[name], stage)
            assert seen.setdefault((name, stage), value) == value
    assert seen[("uniform3", FINAL_STAGE)] > seen[("uniform4", FINAL_STAGE)] > 0
    evaluator.restore()
    assert torch.equal(_logits(loaded.model), dense_logits)


def test_kl_matches_the_full_logits_kl(llama_dir, stats):
    config = _configs()["drops"]
    loaded = load_model(str(llama_dir))
    vocab = loaded.info.vocab_size
    full = DenseReference.compute(loaded.model, TOKENS, top_k=vocab)
    dense_logprobs = list(next_token_logprobs(loaded.model, TOKENS, batch_size=4))
    exact = kl_to_reference(_compressed(llama_dir, config, stats), TOKENS, dense_logprobs)
    fitness = FitnessConfig(metric="kl", screen_sequences=2, screen_tokens=12, top_k=vocab)
    evaluator = Evaluator(loaded.model, loaded.info, TOKENS, fitness, full, stats=stats)
    got = evaluator.evaluate(config)
    assert got == pytest.approx(exact, rel=1e-5)
    evaluator.restore()  # the model is uncompressed again, so another evaluator may take it
    # Top-8 alone is a lower bound of it; with tail samples the estimate is unbiased and lands close.
    bound_fitness = FitnessConfig(metric="kl", screen_sequences=2, screen_tokens=12, top_k=8, tail_samples=0)
    top8 = DenseReference.compute(loaded.model, TOKENS, top_k=8, tail_samples=256)
    bound = Evaluator(loaded.model, loaded.info, TOKENS, bound_fitness, top8, stats=stats)
    coarse = bound.evaluate(config)
    bound.restore()
    sampled_fitness = FitnessConfig(metric="kl", screen_sequences=2, screen_tokens=12, top_k=8, tail_samples=256)
    sampled = Evaluator(loaded.model, loaded.info, TOKENS, sampled_fitness, top8, stats=stats).evaluate(config)
    assert 0 < coarse < 0.5 * exact  # a near-uniform random model keeps most of its KL in the tail
    assert sampled == pytest.approx(exact, rel=0.02)


def test_the_screen_stage_is_a_prefix_of_the_full_reference(llama_dir, stats):
    # Without tail samples: the two references would draw different samples for the prefix.
    config = _configs()["uniform3"]
    loaded = load_model(str(llama_dir))
    reference = DenseReference.compute(loaded.model, TOKENS, top_k=KL.top_k, tail_samples=0)
    bound = FitnessConfig(metric="kl", screen_sequences=2, screen_tokens=12, top_k=KL.top_k, tail_samples=0)
    screened = Evaluator(loaded.model, loaded.info, TOKENS, bound, reference, stats=stats).evaluate(config, SCREEN_STAGE)

    prefix = TOKENS[: bound.screen_sequences, : bound.screen_tokens]
    other = load_model(str(llama_dir))
    own = DenseReference.compute(other.model, prefix, top_k=KL.top_k, tail_samples=0)
    fitness = FitnessConfig(metric="kl", screen_sequences=1, screen_tokens=2, top_k=KL.top_k, tail_samples=0)
    direct = Evaluator(other.model, other.info, prefix, fitness, own, stats=stats).evaluate(config, FINAL_STAGE)
    # Only float rounding differs (attention over 12 vs 24 keys); the tiny model's KL is ~1e-4 nats.
    torch.testing.assert_close(reference.topk_logprobs[:2, :12], own.topk_logprobs, rtol=0, atol=1e-5)
    assert screened == pytest.approx(direct, rel=1e-3)


def test_weight_cache_and_counters(llama_dir, stats):
    loaded = load_model(str(llama_dir))
    evaluator = Evaluator(loaded.model, loaded.info, TOKENS, PPL, stats=stats)
    base = CompressionConfig(default=TensorSetting(bits=4, group_size=32))
    evaluator.evaluate(base, SCREEN_STAGE)
    tensors = len(loaded.info.linears()) + sum(len(l.other_tensors) for l in loaded.info.layers) + 2
    assert evaluator.stats.last_swapped == evaluator.stats.last_compressed == tensors
    changed = CompressionConfig(default=base.default, layers={2: LayerConfig(mlp=TensorSetting(bits=3))})
    evaluator.evaluate(changed, SCREEN_STAGE)
    assert evaluator.stats.last_swapped == evaluator.stats.last_compressed == 3  # gate, up, down of layer 2
    evaluator.evaluate(base, SCREEN_STAGE)
    assert (evaluator.stats.last_swapped, evaluator.stats.last_compressed) == (3, 0)  # from the cache
    evaluator.evaluate(base, FINAL_STAGE)
    stats_now = evaluator.stats
    assert stats_now.last_swapped == 0 and stats_now.evaluations == 4 and stats_now.cache_entries == tensors + 3
    assert stats_now.last_stage == FINAL_STAGE and stats_now.seconds > 0

    uncached = Evaluator(load_model(str(llama_dir)).model, loaded.info, TOKENS, PPL, stats=stats, cache_bytes=0)
    for config in (base, changed, base):
        uncached.evaluate(config, SCREEN_STAGE)
    assert uncached.stats.last_compressed == 3 and uncached.stats.cache_entries == 0


def test_reference_round_trips_and_holds_the_dense_distribution(llama_dir, tmp_path):
    loaded = load_model(str(llama_dir))
    reference = DenseReference.compute(loaded.model, TOKENS, top_k=16, tail_samples=8, batch_size=3)
    again = DenseReference.load(reference.save(tmp_path / "reference.safetensors"))
    for name in ("token_ids", "topk_ids", "topk_logprobs", "tail_logprob", "tail_ids", "tail_logprobs",
                 "target_logprob"):
        assert torch.equal(getattr(again, name), getattr(reference, name))
    assert torch.equal(DenseReference.compute(loaded.model, TOKENS, top_k=16, tail_samples=8).tail_ids,
                       reference.tail_ids)  # the draws are seeded
    log_p = torch.cat(list(next_token_logprobs(loaded.model, TOKENS, batch_size=4)))
    torch.testing.assert_close(reference.topk_logprobs, log_p.topk(16, -1).values)
    torch.testing.assert_close(reference.tail_logprobs, log_p.gather(-1, reference.tail_ids.long()))
    in_top = (reference.tail_ids[..., :, None] == reference.topk_ids[..., None, :]).any(-1)
    assert not bool(in_top.any())  # every draw is from the tail
    mass = torch.logsumexp(torch.cat([reference.topk_logprobs, reference.tail_logprob[..., None]], -1), -1)
    torch.testing.assert_close(mass, torch.zeros_like(mass), rtol=0, atol=1e-5)
    dense_ppl = perplexity(loaded.model, TOKENS.reshape(-1), seq_len=TOKENS.shape[1]).ppl
    assert reference.perplexity() == pytest.approx(dense_ppl, rel=1e-5)
    with pytest.raises(EvoError, match="recomputed"):  # fewer tail samples than the fitness asks
        Evaluator(loaded.model, loaded.info, TOKENS, FitnessConfig(screen_tokens=12, top_k=16), reference)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(EvoError, match="corrupt"):
        DenseReference.load(tmp_path / "bad.safetensors")
    with pytest.raises(EvoError, match="other tokens"):
        Evaluator(loaded.model, loaded.info, TOKENS[:, ::-1].copy(), KL, reference)


def test_topk_kl_is_a_lower_bound_reaching_the_exact_kl():
    torch.manual_seed(0)
    p_logits, q_logits = torch.randn(50, 300) * 3, torch.randn(50, 300) * 3
    exact = exact_kl(p_logits, q_logits)
    log_p = torch.log_softmax(p_logits, -1)
    previous = torch.zeros(50)
    for k in (1, 8, 64, 299, 300):
        values, ids = log_p.topk(k, -1)
        tail = torch.logsumexp(log_p.scatter(-1, ids, float("-inf")), -1)
        approx = topk_kl(q_logits, ids, values, tail)
        assert bool((approx <= exact + 1e-5).all()) and bool((approx >= previous - 1e-5).all())
        previous = approx
    torch.testing.assert_close(previous, exact, rtol=1e-5, atol=1e-6)
    assert math.isfinite(float(previous.sum()))


def test_tail_samples_make_the_kl_unbiased():
    torch.manual_seed(0)
    p_logits = torch.randn(200, 1000) * 2
    q_logits = p_logits + 0.3 * torch.randn(200, 1000)  # a perturbed copy, like a compressed model
    exact = float(exact_kl(p_logits, q_logits).mean())
    log_p = torch.log_softmax(p_logits, -1)
    values, ids = log_p.topk(16, -1)
    rest = log_p.scatter(-1, ids, float("-inf"))
    tail = torch.logsumexp(rest, -1)
    draws = torch.multinomial(torch.exp(rest - tail[:, None]), 64, replacement=True)
    bound = float(topk_kl(q_logits, ids, values, tail).mean())
    estimate = float(topk_kl(q_logits, ids, values, tail, draws, log_p.gather(-1, draws)).mean())
    assert bound < 0.5 * exact  # most of this KL sits in the tail
    assert estimate == pytest.approx(exact, rel=0.02)


def test_bad_settings_are_user_errors(llama_dir):
    with pytest.raises(EvoError, match="metric"):
        FitnessConfig(metric="bleu")
    with pytest.raises(EvoError, match="top_k"):
        FitnessConfig(top_k=0)
    assert FitnessConfig.from_dict(KL.to_dict()) == KL
    loaded = load_model(str(llama_dir))
    with pytest.raises(EvoError, match="reference"):
        Evaluator(loaded.model, loaded.info, TOKENS, FitnessConfig(screen_tokens=12), None)
    with pytest.raises(EvoError, match="screening"):
        Evaluator(loaded.model, loaded.info, TOKENS, FitnessConfig(metric="ppl", screen_tokens=100))
    evaluator = Evaluator(loaded.model, loaded.info, TOKENS, PPL)
    with pytest.raises(EvoError, match="stage"):
        evaluator.evaluate(CompressionConfig(), 3)
    with pytest.raises(EvoError, match="activation"):
        evaluator.evaluate(_configs()["drops"])


@pytest.mark.parametrize("family", ["opt", "qwen2"])
def test_other_families_match_compress_model(tiny_model_dir, family):
    directory = tiny_model_dir(family)
    config = CompressionConfig(
        default=TensorSetting(bits=3, group_size=32),
        layers={0: LayerConfig(drop="mlp"), 1: LayerConfig(drop="layer"), 3: LayerConfig(drop="attention")},
    )
    loaded = load_model(str(directory))
    evaluator = Evaluator(loaded.model, loaded.info, TOKENS, PPL)
    got = [evaluator.evaluate(c) for c in (config, CompressionConfig(), config)]
    fresh = load_model(str(directory))
    compress_model(fresh, None, config, measure=False)
    expected = perplexity(fresh.model, TOKENS.reshape(-1), seq_len=TOKENS.shape[1]).ppl
    assert got[0] == got[2] == pytest.approx(expected, rel=1e-5)


def test_post_norm_layers_cannot_be_dropped_by_zeroing():
    from transformers import AutoModelForCausalLM, OPTConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=259,
                  word_embed_proj_dim=32, do_layer_norm_before=False)
    ).eval()
    info = describe_model(model)
    evaluator = Evaluator(model, info, TOKENS, PPL)
    assert math.isfinite(evaluator.evaluate(CompressionConfig(layers={0: LayerConfig(drop="mlp")})))
    with pytest.raises(EvoError, match="identity"):
        evaluator.evaluate(CompressionConfig(layers={0: LayerConfig(drop="layer")}))


def test_materialise_diffing_equals_a_full_materialise_over_random_genome_sequences(llama_dir, stats):
    """Property: materialise touches only what differs from the resident state (per-layer plans, per
    tensor settings), and after any sequence of genomes the model is exactly the one a full materialise
    from the dense model gives (every parameter, every swapped module, the logits)."""
    import random

    from evo.search.space import SearchSpace

    diffing = load_model(str(llama_dir))
    full = load_model(str(llama_dir))
    space = SearchSpace.load("default")
    genes = space.genes(diffing.info)
    evaluator = Evaluator(diffing.model, diffing.info, TOKENS, PPL, stats=stats)
    reference = Evaluator(full.model, full.info, TOKENS, PPL, stats=stats)
    rng = random.Random(0)
    genome = [0] * len(genes)
    swapped = []
    for step in range(40):
        if step % 5 == 0:  # a jump: every gene drawn again, drops included
            genome = [rng.randrange(len(g.choices)) for g in genes]
        else:  # a child: one or two genes changed, as the engine's moves do
            for i in rng.sample(range(len(genes)), rng.randint(1, 2)):
                genome[i] = rng.randrange(len(genes[i].choices))
        config = space.decode(tuple(genome), diffing.info)
        if len(config.drops) and all(d == "layer" for d in config.drops.values()) and \
                len(config.drops) == diffing.info.num_layers:
            continue
        swapped.append(evaluator.materialise(config)[0])
        reference.restore()
        reference.materialise(config)
        for (name, got), (_, want) in zip(diffing.model.named_parameters(), full.model.named_parameters()):
            assert torch.equal(got, want), (step, name)
        assert sorted(evaluator._replaced) == sorted(reference._replaced), step
        assert torch.equal(_logits(diffing.model), _logits(full.model)), step
    tensors = len(evaluator._resident)
    assert max(swapped[1:]) < tensors and min(swapped) < 8  # children swap a few tensors, not the model
    evaluator.restore()
    assert torch.equal(_logits(diffing.model), _logits(load_model(str(llama_dir)).model))
