"""Properties of the per-tensor operators: settings, pruning, rescaled RTN quantization.

Small random matrices only, so the file runs in about a second.
"""

from __future__ import annotations

import json

import pytest
import torch

from evo.compress import (
    ActivationStats,
    TensorSetting,
    code_max,
    compress_tensor,
    compute_grid,
    dequantize,
    pipeline_names,
    prune_mask,
    quantize,
)
from evo.compress.grid import column_group, symmetric_midpoint
from evo.errors import EvoError

QUANT_BITS = (2, 3, 4, 5, 6, 8)



def _weight(out: int = 24, inp: int = 576, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) * 0.02
    # Heavy tails like real LLM weights, so clipping (rescale < 1) has outliers to clip.
    w[:, ::37] *= 8
    return w


def _per_column_grid(w: torch.Tensor, setting: TensorSetting):
    """Per-element step and the values of the lowest and highest code of its group."""
    grid = compute_grid(w, setting)
    cols = column_group(w.shape[1], setting.group_size)
    step = grid.scales.float()[:, cols]
    top = code_max(setting)
    if setting.symmetric:
        mid = symmetric_midpoint(setting.bits)
        low, high = -mid * step, mid * step
    elif setting.zero_point == "int":
        z = grid.zeros.float()[:, cols]
        low, high = -z * step, (top - z) * step
    else:
        m = grid.zeros.float()[:, cols]
        low, high = m, top * step + m
    return step, low, high


GRID_CASES = [
    pytest.param(dict(symmetric=False, zero_point="int"), id="asym-int"),
    pytest.param(dict(symmetric=True), id="sym"),
    pytest.param(dict(symmetric=False, zero_point="float"), id="asym-float"),
]


@pytest.mark.parametrize("bits", QUANT_BITS)
@pytest.mark.parametrize("group_size", [128, 64, 32, None])
@pytest.mark.parametrize("grid_kind", GRID_CASES)
@pytest.mark.parametrize("rescale", [1.0, 0.5, 2.0])
def test_error_at_most_half_step_inside_clip_range(bits, group_size, grid_kind, rescale):
    w = _weight(seed=bits)
    setting = TensorSetting(bits=bits, group_size=group_size, rescale=rescale, **grid_kind)
    q = quantize(w, setting)
    err = (w - dequantize(q)).abs()
    step, low, high = _per_column_grid(w, setting)
    inside = (w >= low - step / 2) & (w <= high + step / 2)
    slack = 1e-6 * (w.abs() + step)  # float32 arithmetic only; the fp16 values are used exactly
    assert bool((err[inside] <= step[inside] / 2 + slack[inside]).all())
    if rescale >= 1.0:
        assert bool(inside.all()), "nothing may be clipped at rescale >= 1"
    else:
        codes = q.codes.float()
        assert bool(inside.any()) and not bool(inside.all())
        assert bool(((codes == 0) | (codes == code_max(setting)))[~inside].all())
    assert int(q.codes.max()) <= code_max(setting)


def test_ragged_last_group_of_576_at_g128_has_its_own_scale():
    w = torch.rand(24, 576) - 0.5
    w[:, 512:] *= 100  # only the last 64 columns are large
    q = quantize(w, TensorSetting(bits=4, group_size=128))
    assert q.scales.shape == (24, 5)
    assert bool((q.scales[:, 4].float() > 20 * q.scales[:, :4].float().amax(dim=1)).all())
    assert bool(((w - dequantize(q)).abs()[:, :512] <= q.scales[:, :4].float().amax(dim=1, keepdim=True)).all())


def test_scales_are_fp16_and_dequantization_uses_them():
    w = _weight()
    q = quantize(w, TensorSetting(bits=4, group_size=64))
    assert q.scales.dtype == torch.float16 and q.zeros.dtype == torch.uint8
    cols = column_group(576, 64)
    manual = (q.codes.float() - q.zeros.float()[:, cols]) * q.scales.float()[:, cols]
    assert torch.equal(dequantize(q), manual)


@pytest.mark.parametrize("bits", QUANT_BITS)
@pytest.mark.parametrize("symmetric", [False, True])
def test_pruned_weights_dequantize_to_exact_zero(bits, symmetric):
    w = _weight(seed=bits) + 0.05  # shift so that 0 is not a group's natural centre
    setting = TensorSetting(bits=bits, symmetric=symmetric, sparsity=0.3, rescale=0.5)
    compressed = compress_tensor(w, setting)
    mask = compressed.prune_mask
    assert mask is not None
    deq = compressed.dequantized()
    assert bool((deq[mask] == 0.0).all())
    expected_zero_code = symmetric_midpoint(bits) if symmetric else None
    if expected_zero_code is not None:
        assert bool((compressed.quantized.codes[mask] == expected_zero_code).all())


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.95, 0.013])
@pytest.mark.parametrize("inp", [576, 33])
def test_each_row_has_exactly_the_requested_sparsity(sparsity, inp):
    w = _weight(inp=inp)
    w[:, ::2] = w[:, :1]  # many ties, which must still give exact counts
    mask = prune_mask(w, sparsity, "magnitude")
    assert bool((mask.sum(dim=1) == round(sparsity * inp)).all())


def test_magnitude_prunes_the_smallest_and_breaks_ties_by_column():
    w = torch.tensor([[0.5, -0.1, 0.1, 2.0, 0.1, -3.0]])
    mask = prune_mask(w, 0.5, "magnitude")
    assert mask.tolist() == [[False, True, True, False, True, False]]
    mask = prune_mask(w, 2 / 6, "magnitude")  # ties at 0.1: the lower column index goes first
    assert mask.tolist() == [[False, True, True, False, False, False]]


@pytest.mark.parametrize("criterion, stat", [("wanda", "l2"), ("linf", "absmax")])
def test_activation_aware_criteria_keep_columns_with_large_activations(criterion, stat):
    w = _weight(inp=64)
    w[:, 7] = 1e-4  # the smallest weights of every row ...
    l2 = torch.ones(64)
    absmax = torch.ones(64)
    {"l2": l2, "absmax": absmax}[stat][7] = 1e6  # ... but their inputs are huge
    stats = ActivationStats(l2=l2, absmax=absmax)
    setting = TensorSetting(bits=4, group_size=64, sparsity=0.5, prune_criterion=criterion)
    compressed = compress_tensor(w, setting, stats)
    assert not bool(compressed.prune_mask[:, 7].any())
    assert bool(compress_tensor(w, TensorSetting(bits=4, group_size=64, sparsity=0.5)).prune_mask[:, 7].all())


@pytest.mark.parametrize("criterion", ["wanda", "linf"])
def test_activation_aware_criteria_without_stats_ask_for_them(criterion):
    setting = TensorSetting(bits=4, sparsity=0.5, prune_criterion=criterion)
    with pytest.raises(EvoError, match="activation statistics"):
        compress_tensor(_weight(), setting)


def test_larger_rescale_uses_fewer_codes():
    w = _weight()
    distinct = [
        int(torch.unique(quantize(w, TensorSetting(bits=4, rescale=r)).codes).numel()) for r in (0.5, 1.0, 2.0, 4.0)
    ]
    assert distinct == sorted(distinct, reverse=True) and distinct[-1] < distinct[1]


def test_bits16_keeps_bf16():
    w = _weight()
    compressed = compress_tensor(w, TensorSetting())
    assert compressed.quantized.codes.dtype == torch.bfloat16 and compressed.quantized.scales is None
    assert torch.equal(compressed.dequantized(), w.to(torch.bfloat16).float())


def test_pipeline_runs_registered_operators_in_order():
    assert pipeline_names() == ("prune", "rescale", "quantize")
    w = _weight()
    setting = TensorSetting(bits=3, sparsity=0.25)
    compressed = compress_tensor(w, setting)
    manual = quantize(w, setting, prune_mask(w, 0.25, "magnitude"))
    assert torch.equal(compressed.quantized.codes, manual.codes)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(bits=7), "bits"),
        (dict(bits=True), "bits"),
        (dict(bits=4, group_size=100), "group_size"),
        (dict(bits=4, rescale=0.1), "rescale"),
        (dict(bits=4, rescale=9.0), "rescale"),
        (dict(bits=4, rescale=float("nan")), "rescale"),
        (dict(bits=4, sparsity=0.96), "sparsity"),
        (dict(bits=4, sparsity=-0.1), "sparsity"),
        (dict(bits=4, prune_criterion="random"), "prune_criterion"),
        (dict(bits=4, zero_point="half"), "zero_point"),
        (dict(bits=4, zero_point="float", sparsity=0.2), "zero_point"),
        (dict(bits=4, zero_point="float", symmetric=True), "zero_point"),
        (dict(bits=16, sparsity=0.2), "sparsity"),
        (dict(bits=16, rescale=2.0), "rescale"),
        (dict(bits=4, symmetric="yes"), "symmetric"),
    ],
)
def test_out_of_range_settings_raise_naming_the_field(kwargs, field):
    with pytest.raises(EvoError, match=rf"TensorSetting\.{field}="):
        TensorSetting(**kwargs)


@pytest.mark.parametrize(
    "setting",
    [
        TensorSetting(),
        TensorSetting(bits=3, group_size=None, symmetric=True, rescale=1.5, sparsity=0.2, prune_criterion="wanda"),
        TensorSetting(bits=4, group_size=32, zero_point="float", rescale=0.3),
    ],
)
def test_settings_round_trip_through_json(setting):
    data = json.loads(json.dumps(setting.to_dict()))
    assert TensorSetting.from_dict(data) == setting
    assert TensorSetting.from_dict(data).key() == setting.key()


def test_setting_key_and_normalisation():
    setting = TensorSetting(bits=3, rescale=1.5, sparsity=0.2, prune_criterion="wanda")
    assert setting.key() == "b3-g128-asym-r1.5-s0.2-wanda-zint"
    assert TensorSetting(bits=4, group_size=None, symmetric=True).key() == "b4-gch-sym-r1.0-s0.0-zint"
    assert TensorSetting(bits=4, prune_criterion="linf").key() == TensorSetting(bits=4).key()
    assert TensorSetting(bits=4, rescale=2) == TensorSetting(bits=4, rescale=2.0)
    assert TensorSetting(bits=16, group_size=None).key() == "b16"
    assert TensorSetting.from_dict({"bits": 4, "group_size": "channel"}).group_size is None
    with pytest.raises(EvoError, match="unknown TensorSetting field"):
        TensorSetting.from_dict({"bits": 4, "groupsize": 64})
