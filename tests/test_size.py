"""Lossless coders, exact per-tensor sizes and the on-disk size cache.

Every size claimed is the length of a frame actually produced and decoded back.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evo.compress import coding
from evo.compress import TensorSetting, compress_tensor
from evo.errors import EvoError
from evo.compress.coding import decode_tensor, encode_tensor
from evo.compress.size import SizeCache, SizeEntry, SizeKey, cached_size



def _skewed_codes(bits: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    levels = 1 << bits
    p = np.exp(-np.abs(np.arange(levels) - levels / 3) / max(levels / 8, 0.6))
    return rng.choice(levels, size=n, p=p / p.sum()).astype(np.uint8)


def _weight(out: int = 48, inp: int = 576, seed: int = 0) -> torch.Tensor:
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed)) * 0.02


CODE_CASES = [
    np.zeros(0, np.uint8),
    np.array([5], np.uint8),
    np.full(1001, 3, np.uint8),
    np.arange(256, dtype=np.uint8),
]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("coder", list(coding.CODE_CODERS))
def test_every_coder_decodes_exactly(bits, coder):
    cases = [_skewed_codes(bits, 5003, seed=bits)] + [c[c < (1 << bits)] for c in CODE_CASES]
    for codes in cases:
        frame = coding.encode_codes(codes, bits, coder)
        assert coding.frame_coder(frame) == coder
        decoded = coding.decode(frame)
        assert decoded.dtype == np.uint8 and np.array_equal(decoded, codes)


@pytest.mark.parametrize(
    "values",
    [
        np.zeros(0, np.uint16),
        np.random.default_rng(1).integers(0, 1 << 16, 3001).astype(np.uint16),
        torch.randn(4000).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16),
        torch.rand(700).to(torch.float16).view(torch.int16).numpy().view(np.uint16),
    ],
)
def test_u16_frames_decode_exactly(values):
    frames = coding.encode_u16_all(values)
    assert set(frames) == {"u16-zstd", "u16-planes", "u16-bf16-fields"}
    for name, frame in frames.items():
        assert coding.frame_coder(frame) == name
        decoded = coding.decode(frame)
        assert decoded.dtype == np.uint16 and np.array_equal(decoded, values)
    name, frame = coding.encode_u16(values)
    assert len(frame) == min(len(f) for f in frames.values()) and frames[name] == frame


def test_encode_best_picks_the_smallest():
    for bits in (2, 4, 8):
        codes = _skewed_codes(bits, 20000)
        frames = coding.encode_all(codes, bits)
        name, frame = coding.encode_best(codes, bits)
        assert len(frame) == min(len(f) for f in frames.values()) and frames[name] == frame
    # A handful of codes: headers dominate and plain packing must win.
    assert coding.encode_best(np.array([1, 2, 3], np.uint8), 2)[0] == "packed"


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_ans_is_within_two_percent_of_order0_entropy(bits):
    codes = _skewed_codes(bits, 200_000, seed=bits)
    entropy_bytes = coding.order0_entropy_bits(codes) / 8
    frame = coding.encode_codes(codes, bits, "ans")
    assert len(frame) <= 1.02 * entropy_bytes


def test_order0_entropy():
    assert coding.order0_entropy_bits(np.array([0, 1, 0, 1], np.uint8)) == pytest.approx(4.0)
    assert coding.order0_entropy_bits(np.full(10, 7, np.uint8)) == 0.0


def test_corrupt_frame_is_a_user_error():
    with pytest.raises(EvoError, match="corrupt frame"):
        coding.decode(b"\xff\x04\x01")


SETTINGS = [
    TensorSetting(bits=4),
    TensorSetting(bits=3, symmetric=True, group_size=None, sparsity=0.5),
    TensorSetting(bits=2, group_size=32, rescale=2.0),
    TensorSetting(bits=8, group_size=64, zero_point="float"),
    TensorSetting(),
]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key())
def test_encode_decode_tensor_is_exact(setting):
    q = compress_tensor(_weight(), setting).quantized
    encoded = encode_tensor(q)
    assert encoded.compressed_bytes == sum(len(f) for f in encoded.frames.values())
    back = decode_tensor(encoded, q.shape, setting)
    assert torch.equal(back.codes.view(torch.uint8) if back.codes.dtype == torch.uint8 else back.codes, q.codes)
    for name in ("scales", "zeros"):
        a, b = getattr(q, name), getattr(back, name)
        assert (a is None and b is None) or (a.dtype == b.dtype and torch.equal(a, b))


def test_side_info_is_well_below_half_a_bit_per_weight_at_g64():
    w = _weight(out=256)
    encoded = encode_tensor(compress_tensor(w, TensorSetting(bits=4, group_size=64)).quantized)
    side = encoded.frame_bytes["scales"] + encoded.frame_bytes["zeros"]
    assert side * 8 / w.numel() < 0.3


def test_size_cache_matches_frames_and_persists(tmp_path):
    setting = TensorSetting(bits=4, sparsity=0.2)
    q = compress_tensor(_weight(), setting).quantized
    key = SizeKey("smollm2-135m", "model.layers.0.mlp.up_proj.weight", setting.key())
    calls = []

    def compute():
        calls.append(1)
        return encode_tensor(q)

    entry = cached_size(SizeCache(tmp_path), key, compute)
    assert entry.compressed_bytes == sum(len(f) for f in encode_tensor(q).frames.values())
    assert entry.coders["codes"] in coding.CODE_CODERS

    fresh = SizeCache(tmp_path)
    assert fresh.get(key) == entry
    assert cached_size(fresh, key, compute) == entry and len(calls) == 1
    assert fresh.get(SizeKey(key.model_id, key.tensor_name, key.setting_key, stats_digest="abc")) is None


def test_size_cache_treats_a_damaged_file_as_a_miss(tmp_path):
    key = SizeKey("m", "t", "b4-g128-asym-r1.0-s0.0-zint")
    cache = SizeCache(tmp_path)
    cache.put(key, SizeEntry(10, 12.5, {"codes": "ans"}, {"codes": 10}))
    path = next(tmp_path.rglob("*.json"))
    path.write_text("{not json")
    assert SizeCache(tmp_path).get(key) is None
    assert not list(tmp_path.rglob(".tmp-*"))


def test_decoding_with_the_wrong_setting_is_refused():
    q = compress_tensor(_weight(), TensorSetting(bits=4)).quantized
    with pytest.raises(EvoError, match="do not match"):
        decode_tensor(encode_tensor(q), q.shape, TensorSetting(bits=3))
