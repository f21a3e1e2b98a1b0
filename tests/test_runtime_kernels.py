"""evo.runtime.kernels: the fast "codes" dequantization equals evo's dequantize to the bit at every
width, grid and dtype, in blocks of any size; the shared scratch buffers never leak between layers
or threads; the CUDA compiled kernel is used only once it matches the eager one."""

from __future__ import annotations

import math
import shutil
import threading

import pytest
import torch
import torch.nn.functional as F

from evo.compress import TensorSetting, dequantize, quantize
from evo.runtime import kernels
from evo.runtime.modules import PackedLinear, PackedWeight

SETTINGS = [
    TensorSetting(bits=2, group_size=None, symmetric=True),
    TensorSetting(bits=3, group_size=32),  # 100 columns: three full groups and a ragged one of 4
    TensorSetting(bits=4, group_size=128),  # one ragged group only
    TensorSetting(bits=5, group_size=64, zero_point="float"),
    TensorSetting(bits=6, group_size=32, sparsity=0.3),
    TensorSetting(bits=6, group_size=None),
    TensorSetting(bits=8, group_size=None, symmetric=True, rescale=2.0),
    TensorSetting(bits=8, group_size=32, zero_point="float"),
]


def _quantized(setting: TensorSetting, rows: int = 37, columns: int = 100, seed: int = 0):
    weight = torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed))
    return quantize(weight, setting)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key())
@pytest.mark.parametrize("block", [kernels.BLOCK_WEIGHTS, 150, 1])  # one block; 1-2 rows and a ragged last; row by row
def test_fast_dequantize_is_evo_dequantize_to_the_bit(setting, dtype, block, monkeypatch):
    monkeypatch.setattr(kernels, "BLOCK_WEIGHTS", block)
    quantized = _quantized(setting)
    packed = PackedWeight(quantized, dtype)
    expected = dequantize(quantized).to(dtype)
    assert torch.equal(packed.dequantize(), expected)
    assert torch.equal(packed.dequantize_scratch(), expected)
    x = torch.randn(3, 100).to(dtype)
    assert torch.equal(PackedLinear(packed, None)(x), F.linear(x, expected))


def test_scratch_buffers_do_not_alias_between_layers():
    a = PackedWeight(_quantized(TensorSetting(bits=3, group_size=32), seed=1), torch.float32)
    b = PackedWeight(_quantized(TensorSetting(bits=4, group_size=None, symmetric=True), seed=2), torch.float32)
    c = PackedWeight(_quantized(TensorSetting(bits=6, group_size=64), rows=80, columns=64, seed=3), torch.float32)
    layers = {"a": PackedLinear(a, None), "b": PackedLinear(b, torch.randn(37)), "c": PackedLinear(c, None)}
    weights = {"a": a.dequantize(), "b": b.dequantize(), "c": c.dequantize()}
    inputs = {"a": torch.randn(2, 100), "b": torch.randn(2, 100), "c": torch.randn(2, 64)}
    expected = {k: F.linear(inputs[k], weights[k], layers[k].bias) for k in layers}
    outputs = []
    for key in ["a", "b", "a", "c", "b", "c", "a", "a"]:  # interleaved, same and different shapes
        out = layers[key](inputs[key])
        assert torch.equal(out, expected[key])
        outputs.append((key, out))
    for key, out in outputs:  # an earlier layer's output is not overwritten by a later dequantization
        assert torch.equal(out, expected[key])
    held = layers["a"].weight  # .weight is a tensor of its own, not the shared buffer
    layers["c"](inputs["c"])
    assert torch.equal(held, weights["a"])
    assert kernels.scratch_bytes() >= max(w.numel() * 4 for w in weights.values())


def test_scratch_buffers_are_per_thread():
    packed = [PackedWeight(_quantized(TensorSetting(bits=b, group_size=32), seed=b), torch.float32) for b in (3, 5)]
    layers = [PackedLinear(p, None) for p in packed]
    x = torch.randn(4, 100)
    expected = [F.linear(x, p.dequantize()) for p in packed]
    failures = []

    def work(i: int) -> None:
        for _ in range(30):
            if not torch.equal(layers[i](x), expected[i]):
                failures.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_release_scratch_frees_the_buffers():
    packed = PackedWeight(_quantized(TensorSetting(bits=3, group_size=32)), torch.float32)
    PackedLinear(packed, None)(torch.randn(1, 100))
    assert kernels.scratch_bytes() > 0
    kernels.release_scratch()
    assert kernels.scratch_bytes() == 0


@pytest.mark.parametrize("agrees", [True, False])
def test_compiled_kernel_is_used_only_once_it_matches_the_eager_one(agrees, monkeypatch):
    # The CUDA path's logic, on the CPU: a stand-in for the compiled kernel (right or wrong).
    calls = []

    def fake_compiled(layout, int_zeros, groups, dtype):
        def kernel(codes, scales, zeros):
            calls.append(1)
            weight = kernels._reference_math(codes, scales, zeros, layout, int_zeros, groups, dtype)
            return weight if agrees else weight + 1

        return kernel

    monkeypatch.setattr(kernels, "compile_enabled", lambda device: True)
    monkeypatch.setattr(kernels, "_compiled", fake_compiled)
    monkeypatch.setattr(kernels, "_verified", {})
    quantized = _quantized(TensorSetting(bits=3, group_size=32))
    packed = PackedWeight(quantized, torch.float32)
    expected = dequantize(quantized)
    if agrees:
        for _ in range(3):
            assert torch.equal(packed.dequantize_scratch(), expected)
        assert len(calls) == 3  # checked on the first call, then trusted
    else:
        with pytest.warns(RuntimeWarning, match="differs from the eager one"):
            assert torch.equal(packed.dequantize_scratch(), expected)
        assert torch.equal(packed.dequantize_scratch(), expected)
        assert len(calls) == 1  # never asked again


def test_compile_failure_falls_back_with_one_warning(monkeypatch):
    def broken(layout, int_zeros, groups, dtype):
        def kernel(*args):
            raise RuntimeError("no compiler")

        return kernel

    monkeypatch.setattr(kernels, "compile_enabled", lambda device: True)
    monkeypatch.setattr(kernels, "_compiled", broken)
    monkeypatch.setattr(kernels, "_verified", {})
    quantized = _quantized(TensorSetting(bits=4, group_size=None, symmetric=True))
    packed = PackedWeight(quantized, torch.bfloat16)
    with pytest.warns(RuntimeWarning, match="torch.compile of the dequantize kernel failed"):
        assert torch.equal(packed.dequantize_scratch(), dequantize(quantized).to(torch.bfloat16))
    assert torch.equal(packed.dequantize_scratch(), dequantize(quantized).to(torch.bfloat16))


def test_compile_is_off_on_the_cpu_and_by_environment(monkeypatch):
    assert not kernels.compile_enabled(torch.device("cpu"))
    monkeypatch.setenv(kernels.COMPILE_ENV, "0")
    assert not kernels.compile_enabled(torch.device("cuda"))
    monkeypatch.setenv(kernels.COMPILE_ENV, "1")
    assert kernels.compile_enabled(torch.device("cuda"))


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor's CPU backend needs a C++ compiler")
def test_compiled_kernels_of_several_layouts_each_compile_and_equal_the_reference():
    """Each layout's kernel compiles with its own ints. Before, every layout shared one code object, so
    the second layout made dynamo treat bits as a symbolic int and `divmod(bits * i, 8)` / `1 << bits`
    failed (on the H200 the runtime then fell back to the eager kernel with a warning)."""
    from evo.runtime.kernels import DequantLayout, _compiled_for_columns, _reference_math
    from evo.runtime.packing import CODES_PER_WORD

    torch.manual_seed(0)
    for bits, rows, columns in [(8, 16, 64), (3, 8, 64), (4, 12, 96)]:
        layout = DequantLayout(bits=bits, rows=0, columns=columns, group=32, kind="symmetric")
        groups = math.ceil(columns / 32)
        packed = torch.randint(0, 256, (rows, bits * math.ceil(columns / CODES_PER_WORD)), dtype=torch.uint8)
        scales = torch.rand(rows, groups, dtype=torch.float16)
        got = _compiled_for_columns(layout, False, groups, torch.float32)(packed, scales, None)
        assert torch.equal(got, _reference_math(packed, scales, None, layout, False, groups, torch.float32))
