"""Quantizers rtn / mse / gptq: rtn unchanged bit for bit, mse's weighted error never above rtn's,
gptq's layer-output error below rtn's, pruned zeros kept, Hessians collected, saved and reloaded."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from evo.compress.artifact import load, write_artifact
from evo.compress import TensorSetting, compress_tensor, dequantize, prune_mask
from evo.compress.gptq import gptq_quantize
from evo.evaluate.hessian import META, HessianSet, collect_hessians, hessian_digest, load_or_collect
from evo.compress.mse import mse_grid, weighted_error
from evo.compress.quantize import quantize
from evo.compress.model import compress_model
from evo.compress.config import CompressionConfig, LayerConfig
from evo.errors import EvoError
from evo.modelio import describe_model
from evo.evaluate.stats import collect_activation_stats

# sha256 of tensors.bin and of the manifest's config/settings/tensors for _RTN_CONFIG on tiny_llama,
# computed with main's code at 3202e88 (before the quantizer field existed).
RTN_TENSORS_SHA256 = "edecd3c60491aa74d95f076c5eb8becf22f3e443d1f1f968ca2d684eccd0bdd8"
RTN_MANIFEST_SHA256 = "cba41b1773d43c02ae8f5ff0495398abde3bf880752ca33728871f3a151d0e83"

_RTN_CONFIG = CompressionConfig(
    default=TensorSetting(bits=3, group_size=32),
    embedding=TensorSetting(bits=8, group_size=64),
    layers={
        0: LayerConfig(
            attention=TensorSetting(bits=2, group_size=None, symmetric=True, rescale=1.5),
            mlp=TensorSetting(bits=4, sparsity=0.25, prune_criterion="wanda"),
        ),
        2: LayerConfig(mlp=TensorSetting(bits=5, zero_point="float", rescale=0.75)),
        3: LayerConfig(attention=TensorSetting(bits=4, group_size=64, sparsity=0.5)),
    },
)


def _inputs(seed: int, tokens: int = 512, features: int = 160) -> torch.Tensor:
    """Correlated inputs with uneven channel scales, like a transformer's."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(features, features, generator=g) * 0.3 + torch.eye(features)
    scale = torch.rand(features, generator=g) * 3 + 0.1
    return (torch.randn(tokens, features, generator=g) @ mix) * scale


def _weight(seed: int, out: int = 48, features: int = 160) -> torch.Tensor:
    return torch.randn(out, features, generator=torch.Generator().manual_seed(1000 + seed)) * 0.05


def _output_error(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return float((x @ w.T - x @ w_hat.T).square().sum())


# --- the setting ---------------------------------------------------------------------------------


def test_unknown_quantizer_is_one_line_naming_the_allowed_ones():
    with pytest.raises(EvoError) as info:
        TensorSetting(bits=4, quantizer="awq")
    message = str(info.value)
    assert "\n" not in message and "'awq'" in message
    assert all(name in message for name in ("rtn", "mse", "gptq"))
    with pytest.raises(EvoError, match="quantizer"):
        CompressionConfig.from_toml_text('[default]\nbits = 4\nquantizer = "hqq"\n')


def test_rtn_keys_and_files_are_unchanged_and_others_round_trip(tmp_path):
    rtn = TensorSetting(bits=3, group_size=128, rescale=1.5, sparsity=0.2, prune_criterion="wanda")
    assert rtn.key() == "b3-g128-asym-r1.5-s0.2-wanda-zint"
    assert "quantizer" not in rtn.to_dict()
    gptq = TensorSetting(bits=3, group_size=64, quantizer="gptq")
    assert gptq.key() == "b3-g64-asym-r1.0-s0.0-zint-qgptq" != TensorSetting(bits=3, group_size=64).key()
    assert TensorSetting(bits=3, quantizer="mse").key().endswith("-qmse")
    config = CompressionConfig(default=gptq, layers={1: LayerConfig(mlp=TensorSetting(bits=4, quantizer="mse"))})
    for path in (tmp_path / "c.toml", tmp_path / "c.json"):
        config.save(path)
        assert CompressionConfig.load(path) == config
    assert 'quantizer = "gptq"' in config.to_toml()


def test_rtn_artifact_is_bit_for_bit_what_main_wrote(tiny_llama, tiny_tokenizer, token_ids, tmp_path):
    info = describe_model(tiny_llama)
    stats = collect_activation_stats(tiny_llama, info, token_ids)
    result = compress_model(tiny_llama, info, _RTN_CONFIG, stats=stats)
    write_artifact(tmp_path / "art", tiny_llama, tiny_tokenizer, result, base_model="tiny-llama")
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert hashlib.sha256((tmp_path / "art" / "tensors.bin").read_bytes()).hexdigest() == RTN_TENSORS_SHA256
    canonical = json.dumps([manifest["config"], manifest["settings"], manifest["tensors"]], sort_keys=True)
    assert hashlib.sha256(canonical.encode()).hexdigest() == RTN_MANIFEST_SHA256


# --- mse -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "setting",
    [
        TensorSetting(bits=2, group_size=32),
        TensorSetting(bits=3, group_size=64),  # 160 = 2 * 64 + 32: a ragged last group
        TensorSetting(bits=4, group_size=None, symmetric=True),
        TensorSetting(bits=3, group_size=128, zero_point="float"),
        TensorSetting(bits=8, group_size=32),
        TensorSetting(bits=4, group_size=32, sparsity=0.5),
    ],
    ids=lambda s: s.key(),
)
def test_mse_weighted_error_is_never_above_rtn(setting, seed):
    w = _weight(seed)
    importance = _inputs(seed).square().mean(dim=0)
    mask = prune_mask(w, setting.sparsity) if setting.sparsity else None
    rtn = dequantize(quantize(w, setting, mask))
    mse_setting = replace(setting, quantizer="mse")
    for weights in (importance, None):
        mse = dequantize(quantize(w, mse_setting, mask, mse_grid(w, mse_setting, mask, weights)))
        assert weighted_error(w, mse, weights) <= weighted_error(w, rtn, weights) * (1 + 1e-6)
        if mask is not None:
            assert bool((mse[mask] == 0).all())
    if setting.bits <= 3:  # at low bits clipping always pays
        assert weighted_error(w, mse, None) < 0.95 * weighted_error(w, rtn, None)


def test_mse_rescale_multiplies_the_chosen_step():
    w = _weight(0)
    base = TensorSetting(bits=3, group_size=32, quantizer="mse")
    wide = TensorSetting(bits=3, group_size=32, quantizer="mse", rescale=2.0)
    step1 = mse_grid(w, base).scales.float()
    step2 = mse_grid(w, wide).scales.float()
    assert torch.allclose(step2, 2 * step1, rtol=2e-3)


def test_mse_uses_statistics_in_compress_tensor():
    w = _weight(3)
    x = _inputs(3)
    setting = TensorSetting(bits=2, group_size=32, quantizer="mse")
    hessian = x.T @ x / x.shape[0]
    weighted = compress_tensor(w, setting, hessian=hessian).dequantized()
    plain = compress_tensor(w, setting).dequantized()
    importance = torch.diagonal(hessian)
    assert weighted_error(w, weighted, importance) <= weighted_error(w, plain, importance)


# --- gptq ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gptq_lowers_the_layer_output_error_below_rtn(bits, seed):
    x = _inputs(seed)
    w = _weight(seed)
    hessian = x.T @ x / x.shape[0]
    for group_size, symmetric in ((32, False), (64, True), (None, False)):
        rtn = TensorSetting(bits=bits, group_size=group_size, symmetric=symmetric)
        gptq = TensorSetting(bits=bits, group_size=group_size, symmetric=symmetric, quantizer="gptq")
        err_rtn = _output_error(x, w, compress_tensor(w, rtn).dequantized())
        err_gptq = _output_error(x, w, compress_tensor(w, gptq, hessian=hessian).dequantized())
        assert err_gptq < 0.9 * err_rtn, (group_size, symmetric, err_gptq / err_rtn)


@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("grid", ["mse", "rtn"])
def test_gptq_variants_beat_rtn_at_4_bits_and_are_deterministic(act_order, grid):
    x, w = _inputs(5), _weight(5)
    hessian = x.T @ x / x.shape[0]
    setting = TensorSetting(bits=4, group_size=32)
    first = gptq_quantize(w, setting, hessian, act_order=act_order, grid=grid)
    again = gptq_quantize(w, setting, hessian, act_order=act_order, grid=grid)
    assert torch.equal(first.codes, again.codes) and torch.equal(first.scales, again.scales)
    assert _output_error(x, w, dequantize(first)) < _output_error(x, w, dequantize(quantize(w, setting)))


@pytest.mark.parametrize("criterion", ["magnitude", "wanda"])
def test_gptq_with_sparsity_keeps_pruned_weights_exactly_zero_and_compensates(criterion):
    x, w = _inputs(7), _weight(7)
    hessian = x.T @ x / x.shape[0]
    act = None
    if criterion == "wanda":
        from evo.compress import ActivationStats

        act = ActivationStats(l2=x.square().sum(0).sqrt(), absmax=x.abs().amax(0))
    for symmetric in (False, True):
        rtn = TensorSetting(bits=4, group_size=32, sparsity=0.5, prune_criterion=criterion, symmetric=symmetric)
        gptq = replace(rtn, quantizer="gptq")
        compressed = compress_tensor(w, gptq, act, hessian)
        w_hat = compressed.dequantized()
        assert compressed.prune_mask is not None and int(compressed.prune_mask.sum()) == w.numel() // 2
        assert bool((w_hat[compressed.prune_mask] == 0).all())
        baseline = compress_tensor(w, rtn, act).dequantized()
        assert torch.equal(compressed.prune_mask, compress_tensor(w, rtn, act).prune_mask)
        # SparseGPT: the kept weights absorb the pruned ones' error, so the output is closer.
        assert _output_error(x, w, w_hat) < 0.95 * _output_error(x, w, baseline)


@pytest.mark.parametrize("sparsity", [0.0, 0.3])
def test_blocked_gptq_equals_the_column_by_column_obs_update(sparsity):
    """The lazy-batch Cholesky form gives exactly the codes of the textbook sequential OBS step:
    round column j, then w_k -= (w_j - q_j) / [H_j⁻¹]_jj · [H_j⁻¹]_jk over the remaining columns."""
    from evo.compress.grid import compute_grid

    x, w = _inputs(3, features=40), _weight(3, out=8, features=40)
    hessian = x.T @ x / x.shape[0]
    setting = TensorSetting(bits=4, group_size=None)
    mask = prune_mask(w, sparsity) if sparsity else None
    grid = compute_grid(w, setting, mask)
    step, zero = grid.scales.double()[:, 0], grid.zeros.double()[:, 0]
    h = hessian.double()
    h = h + 0.01 * torch.diagonal(h).mean() * torch.eye(40, dtype=torch.float64)
    remaining, expected = w.double().clone(), torch.zeros(8, 40, dtype=torch.float64)
    for j in range(40):
        inverse = torch.linalg.inv(h[j:, j:])
        column = remaining[:, j]
        q = ((torch.round(column / step) + zero).clamp(0, 15) - zero) * step
        if mask is not None:
            q = torch.where(mask[:, j], torch.zeros_like(q), q)
        expected[:, j] = q
        remaining[:, j:] -= ((column - q) / inverse[0, 0])[:, None] * inverse[0][None, :]
    found = gptq_quantize(w, setting, hessian, mask, act_order=False, grid="rtn", block_size=16)
    assert torch.equal(dequantize(found).double(), expected)


def test_gptq_needs_a_hessian():
    with pytest.raises(EvoError, match="needs the Hessian"):
        compress_tensor(_weight(0), TensorSetting(bits=4, quantizer="gptq"))


def test_gptq_on_a_tiny_model_lowers_every_linear_output_error(tiny_llama, tmp_path):
    info = describe_model(tiny_llama)
    ids = np.random.default_rng(1).integers(0, 256, size=(8, 32))
    hessians = collect_hessians(tiny_llama, info, ids, tmp_path / "h")
    params = dict(tiny_llama.named_parameters())
    for bits in (2, 3, 4, 8):
        for lin in info.layers[1].linears:
            w, h = params[lin.name].detach(), hessians.hessian(lin.name)

            def error(w_hat):
                d = w - w_hat
                return float(torch.einsum("ij,jk,ik->", d, h, d))

            rtn = compress_tensor(w, TensorSetting(bits=bits, group_size=32)).dequantized()
            gptq = compress_tensor(w, TensorSetting(bits=bits, group_size=32, quantizer="gptq"), hessian=h)
            assert error(gptq.dequantized()) < error(rtn), (bits, lin.role)


# --- Hessians ------------------------------------------------------------------------------------


def test_hessians_are_input_second_moments_shared_saved_and_reloaded(tiny_llama, token_ids, tmp_path):
    info = describe_model(tiny_llama)
    captured: dict[str, list[torch.Tensor]] = {}
    handles = []
    for lin in info.layers[2].linears:
        def keep(module, args, name=lin.name):
            captured.setdefault(name, []).append(args[0].detach().reshape(-1, args[0].shape[-1]).double())
        handles.append(tiny_llama.get_submodule(lin.module).register_forward_pre_hook(keep))
    with torch.no_grad():
        tiny_llama(input_ids=torch.as_tensor(token_ids), use_cache=False)
    for handle in handles:
        handle.remove()

    first = collect_hessians(tiny_llama, info, token_ids, tmp_path / "a", batch_size=3)
    for lin in info.layers[2].linears:
        x = torch.cat(captured[lin.name])
        assert torch.allclose(first.hessian(lin.name).double(), x.T @ x / x.shape[0], rtol=1e-5, atol=1e-6)
        assert torch.equal(first.second_moment(lin.name), torch.diagonal(first.hessian(lin.name)))
    # q/k/v and gate/up read one input: one stored Hessian each.
    layer = info.layers[2]
    assert {first.inputs[layer.linear(r).name]["input"] for r in ("attn_q", "attn_k", "attn_v")} == {
        layer.linear("attn_q").name}
    assert first.inputs[layer.linear("mlp_up").name]["input"] == layer.linear("mlp_gate").name
    assert len(first.layer(2)) == 4
    assert first.digest == hessian_digest(info.model_id, token_ids)

    # Reopened (a resumed run) they are equal; collected again, even in several passes, identical.
    meta_mtime = (tmp_path / "a" / META).stat().st_mtime_ns
    reopened = load_or_collect(tmp_path / "a", tiny_llama, info, token_ids)
    assert (tmp_path / "a" / META).stat().st_mtime_ns == meta_mtime
    again = collect_hessians(tiny_llama, info, token_ids, tmp_path / "b", batch_size=3, max_bytes=1)
    for name in first.names():
        assert torch.equal(reopened.hessian(name), first.hessian(name))
        assert torch.equal(again.hessian(name), first.hessian(name))
    with pytest.raises(EvoError, match="other tokens"):
        HessianSet.open(tmp_path / "a", expected_digest=hessian_digest(info.model_id, token_ids[:2]))
    other = load_or_collect(tmp_path / "a", tiny_llama, info, token_ids[:2])
    assert other.digest == hessian_digest(info.model_id, token_ids[:2])


# --- whole model, artifact, CLI ------------------------------------------------------------------


def test_mse_and_gptq_artifacts_load_back_exactly(tiny_llama, tiny_tokenizer, token_ids, tmp_path):
    info = describe_model(tiny_llama)
    config = CompressionConfig(
        default=TensorSetting(bits=3, group_size=32, quantizer="gptq"),
        embedding=TensorSetting(bits=8, group_size=64, quantizer="mse"),
        layers={1: LayerConfig(mlp=TensorSetting(bits=4, quantizer="mse"),
                               attention=TensorSetting(bits=4, sparsity=0.25, quantizer="gptq"))},
    )
    stats = collect_activation_stats(tiny_llama, info, token_ids)
    hessians = collect_hessians(tiny_llama, info, token_ids, tmp_path / "h")
    with pytest.raises(EvoError, match="needs the Hessians"):
        compress_model(tiny_llama, info, config, stats=stats)
    result = compress_model(tiny_llama, info, config, stats=stats, hessians=hessians)
    summary = write_artifact(tmp_path / "art", tiny_llama, tiny_tokenizer, result)
    assert summary.tensor_bytes == result.tensor_bytes
    model, _ = load(tmp_path / "art")
    ids = torch.arange(5, 37).reshape(2, 16)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, tiny_llama(input_ids=ids).logits)
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert CompressionConfig.from_dict(manifest["config"]) == config
    assert {s.get("quantizer", "rtn") for s in manifest["settings"].values()} == {"rtn", "mse", "gptq"}


def test_baseline_uniform_quantizer_end_to_end(tiny_model_dir, tmp_path):
    from evo.cli import main

    model = str(tiny_model_dir("llama"))
    for quantizer in ("mse", "gptq"):
        out = tmp_path / quantizer
        assert main(["baseline", "uniform", "--model", model, "--bits", "3", "--group-size", "32",
                     "--quantizer", quantizer, "--out", str(out), "--hessians", str(tmp_path / "h")]) == 0
        config = CompressionConfig.load(str(out) + ".toml")
        assert config.default.quantizer == quantizer and config.embedding.quantizer == "rtn"
        assert (out / "manifest.json").is_file()
    assert (tmp_path / "h" / META).is_file()
    assert main(["baseline", "uniform", "--model", model, "--bits", "3", "--quantizer", "awq",
                 "--out", str(tmp_path / "x")]) == 2
