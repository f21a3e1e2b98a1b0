"""Structural drops: the model keeps running in transformers, and a dropped block adds exactly zero."""

from __future__ import annotations

import copy

import pytest
import torch

from evo.compress.structure import (
    ZeroAttention,
    ZeroBlock,
    ZeroLinear,
    apply_block_drop,
    apply_drops,
    drop_layers,
    replaced_modules,
)
from evo.errors import EvoError
from evo.modelio import describe_model

IDS = torch.arange(3, 19).reshape(2, 8)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _zeroed(model, *names: str):
    """A copy whose named parameters are zero: what dropping their block must equal."""
    twin = copy.deepcopy(model)
    params = dict(twin.named_parameters())
    with torch.no_grad():
        for name in names:
            params[name].zero_()
    return twin


def test_drop_layer_removes_it_and_renumbers(tiny_llama):
    info = describe_model(tiny_llama)
    before = _logits(tiny_llama)
    kept = drop_layers(tiny_llama, info, [1])
    assert kept == (0, 2, 3)
    assert len(tiny_llama.model.layers) == 3
    assert tiny_llama.config.num_hidden_layers == 3
    assert [layer.self_attn.layer_idx for layer in tiny_llama.model.layers] == [0, 1, 2]
    after = _logits(tiny_llama)
    assert after.shape == before.shape
    assert not torch.equal(after, before)
    out = tiny_llama.generate(IDS[:1], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 11)


def test_drop_layer_shrinks_layer_types(tiny_qwen2):
    info = describe_model(tiny_qwen2)
    tiny_qwen2.config.layer_types = ["full_attention", "sliding_attention", "full_attention", "full_attention"]
    drop_layers(tiny_qwen2, info, [0, 2])
    assert tiny_qwen2.config.layer_types == ["sliding_attention", "full_attention"]
    assert tiny_qwen2.config.num_hidden_layers == 2


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2", "tiny_opt"])
def test_drop_attention_equals_zero_output_projection(fixture, request):
    model = request.getfixturevalue(fixture)
    info = describe_model(model)
    layer = info.layers[1]
    o_proj = layer.linear("attn_o")
    zeroed = [o_proj.name] + [n for n, _ in layer.other_tensors if n.startswith(o_proj.module + ".")]
    expected = _logits(_zeroed(model, *zeroed))
    before = _logits(model)
    apply_block_drop(model, layer, "attention")
    assert isinstance(model.get_submodule(layer.attention_module), ZeroAttention)
    after = _logits(model)
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2", "tiny_opt"])
def test_drop_mlp_equals_zero_down_projection(fixture, request):
    model = request.getfixturevalue(fixture)
    info = describe_model(model)
    layer = info.layers[0]
    down = layer.linear("mlp_down")
    zeroed = [down.name] + [n for n, _ in layer.other_tensors if n.startswith(down.module + ".")]
    expected = _logits(_zeroed(model, *zeroed))
    apply_block_drop(model, layer, "mlp")
    replaced = [model.get_submodule(path) for path in replaced_modules(layer, "mlp")]
    if layer.mlp_module is None:  # OPT: fc1 and fc2 sit in the layer itself
        assert len(replaced) == 2 and all(isinstance(m, ZeroLinear) for m in replaced)
    else:
        assert len(replaced) == 1 and isinstance(replaced[0], ZeroBlock)
    torch.testing.assert_close(_logits(model), expected, rtol=0, atol=1e-6)


def _cache_kwarg(model) -> str:
    """The keyword this transformers version takes the KV cache by (`cache` from 5.24 on)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


# Layer 0 is where transformers reads the past length from: with its attention dropped, the
# placeholder cache must still grow, or later positions get wrong rotary angles and masks.
FAMILY_DROPS = {
    "tiny_llama": {0: "attention", 1: "layer", 2: "mlp"},
    "tiny_qwen2": {0: "attention", 1: "layer", 2: "mlp"},
    "tiny_mistral": {0: "attention", 1: "layer", 2: "mlp"},
    "tiny_opt": {0: "attention", 1: "layer"},
}


@pytest.mark.parametrize("fixture", sorted(FAMILY_DROPS))
def test_cached_decoding_matches_full_forward_after_drops(fixture, request):
    model = request.getfixturevalue(fixture)
    info = describe_model(model)
    drops = FAMILY_DROPS[fixture]
    kept = apply_drops(model, info, drops)
    assert kept == tuple(i for i in range(info.num_layers) if drops.get(i) != "layer")
    ids = torch.arange(3, 13)[None]
    cache_kwarg = _cache_kwarg(model)
    with torch.no_grad():
        full = model(input_ids=ids).logits
        out = model(input_ids=ids[:, :6], use_cache=True)
        cache, steps = out.past_key_values, []
        for t in range(6, 10):
            out = model(input_ids=ids[:, t : t + 1], use_cache=True, **{cache_kwarg: cache})
            cache = out.past_key_values
            steps.append(out.logits[:, -1])
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, 6:10], rtol=0, atol=1e-5)


@pytest.mark.parametrize("fixture", sorted(FAMILY_DROPS))
def test_generate_with_drops_equals_full_forward_token_for_token(fixture, request):
    """model.generate (KV cache on) picks the tokens greedy decoding over full forwards picks."""
    model = request.getfixturevalue(fixture)
    apply_drops(model, describe_model(model), FAMILY_DROPS[fixture])
    prompt = torch.arange(3, 8)[None]
    new_tokens = 10  # past Mistral's sliding window of 6
    with torch.no_grad():
        generated = model.generate(
            prompt,
            max_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
        ids, expected_scores = prompt, []
        for _ in range(new_tokens):
            logits = model(input_ids=ids).logits[:, -1]
            expected_scores.append(logits)
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    assert generated.sequences.tolist() == ids.tolist()
    torch.testing.assert_close(torch.stack(generated.scores, 1), torch.stack(expected_scores, 1), rtol=0, atol=1e-5)


def test_bad_drops_are_refused(tiny_llama):
    info = describe_model(tiny_llama)
    with pytest.raises(EvoError, match="all 4"):
        drop_layers(tiny_llama, info, range(4))
    with pytest.raises(EvoError, match="layer 7"):
        apply_drops(tiny_llama, info, {7: "mlp"})
    with pytest.raises(EvoError, match="unknown drop"):
        apply_drops(tiny_llama, info, {1: "heads"})
    drop_layers(tiny_llama, info, [3])
    with pytest.raises(EvoError, match="reload"):
        drop_layers(tiny_llama, info, [2])
