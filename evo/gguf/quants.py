"""llama.cpp block formats in vectorised torch: encoders that fit block scales (and minimums) by
importance-weighted least squares, and decoders that mirror ggml's, bit for bit.

Layouts follow ggml-common.h; the fits follow ggml-quants.c's imatrix paths (make_qx_quants for
symmetric grids, make_qkx3_quants for grids with a minimum, make_qp_quants for the 6/4-bit
sub-block scales of the k-quants, the IQ4_NL scale search), rewritten over whole tensors at once:
every block tries all candidate scales in one batched tensor op instead of a C loop per block.
Weights: `importance` is per input column (llama.cpp's imatrix: E[x²] of the activations); each
weight is importance·sqrt(σ² + w²) as in llama.cpp. Without importance the columns count equally
(a flat imatrix), which still weights large weights more through sqrt(σ² + w²).

`dequantize(data, qtype, shape)` equals `gguf.quants.dequantize` of the same bytes exactly (same
float32 operations in the same order); tests/test_gguf.py checks it for every type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from evo.errors import EvoError

QK_K = 256
# IQ4_NL's non-linear grid (kvalues_iq4nl in ggml-common.h).
IQ4_NL_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
# Elements per chunk of candidate evaluation: bounds memory to ~ a few hundred MB for any tensor.
_CHUNK_ELEMENTS = 1 << 22
_EPS = 1e-15  # GROUP_MAX_EPS: a block whose largest |w| is below this is all zeros


@dataclass(frozen=True)
class QuantType:
    """One ggml tensor type: its name, enum value, block size (weights) and bytes per block."""

    name: str
    ggml: GGMLQuantizationType
    block_size: int
    type_size: int
    bits_per_weight: float


def _make(name: str) -> QuantType:
    ggml = GGMLQuantizationType[name]
    block, size = GGML_QUANT_SIZES[ggml]
    return QuantType(name=name, ggml=ggml, block_size=block, type_size=size, bits_per_weight=8 * size / block)


# The types evo writes. Float types carry no encoder (plain casts).
QUANT_TYPES: dict[str, QuantType] = {
    n: _make(n)
    for n in ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "IQ4_NL",
              "Q3_K", "Q2_K")
}
FLOAT_TYPES = ("F32", "F16", "BF16")


def quant_type(name: str) -> QuantType:
    """The QuantType called `name` (case-insensitive), or EvoError listing the known ones."""
    key = str(name).strip().upper()
    if key not in QUANT_TYPES:
        raise EvoError(f"unknown GGUF tensor type {name!r}: use one of {', '.join(QUANT_TYPES)}")
    return QUANT_TYPES[key]


def allows(shape: tuple[int, ...], qtype: str) -> bool:
    """Whether a tensor of this shape (rows, cols) can be stored in `qtype` (cols divisible by the block)."""
    return int(shape[-1]) % quant_type(qtype).block_size == 0


def check_allowed(name: str, shape: tuple[int, ...], qtype: str) -> None:
    """One EvoError line naming the tensor when its rows cannot be cut into `qtype`'s blocks."""
    qt = quant_type(qtype)
    if int(shape[-1]) % qt.block_size:
        raise EvoError(
            f"tensor {name} has rows of {shape[-1]} weights, not divisible by {qt.name}'s block of "
            f"{qt.block_size}: choose a type with {'32-weight blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL)' if qt.block_size == QK_K else 'a block dividing ' + str(shape[-1])} for it"
        )


def tensor_nbytes(shape: tuple[int, ...], qtype: str) -> int:
    """Bytes of a tensor's data in `qtype` (no padding)."""
    qt = quant_type(qtype)
    numel = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    if numel % qt.block_size:
        raise EvoError(f"a tensor of shape {tuple(shape)} cannot be stored as {qt.name} (block of {qt.block_size})")
    return numel // qt.block_size * qt.type_size


# --------------------------------------------------------------------------------------------
# fits (vectorised over blocks: x and w are [B, n])


def _fp16(t: torch.Tensor) -> torch.Tensor:
    """Round to fp16 and back, as the stored scale will be read."""
    return t.to(torch.float16).to(torch.float32)


def _safe_weights(w: torch.Tensor) -> torch.Tensor:
    """A block whose weights are all zero (columns the calibration never activated) counts uniformly."""
    dead = w.sum(-1, keepdim=True) <= 0
    return torch.where(dead, torch.ones_like(w), w)


def fit_symmetric(x: torch.Tensor, w: torch.Tensor, nmax: int, ntry: int = 9) -> torch.Tensor:
    """make_qx_quants: codes in [-nmax, nmax-1]; tries 2·ntry+1 scales around -nmax/max and keeps the
    one with the largest (Σwxl)²/Σwl², i.e. the least weighted squared error after the least-squares
    scale. Returns that scale per block (0 for all-zero blocks)."""
    amax, idx = x.abs().max(-1, keepdim=True)
    vmax = x.gather(-1, idx)
    safe = torch.where(amax < _EPS, torch.ones_like(vmax), vmax)
    steps = torch.arange(-ntry, ntry + 1, device=x.device, dtype=x.dtype) * 0.1
    iscale = -(nmax + steps) / safe  # [B, C]
    q = (iscale.unsqueeze(-1) * x.unsqueeze(1)).round_().clamp_(-nmax, nmax - 1)  # [B, C, n]
    wq = w.unsqueeze(1) * q
    sumlx = (wq * x.unsqueeze(1)).sum(-1)
    suml2 = wq.mul_(q).sum(-1)
    score = torch.where(suml2 > 0, sumlx * sumlx / torch.where(suml2 > 0, suml2, 1), -1.0)
    best = score.argmax(-1, keepdim=True)
    lx, l2 = sumlx.gather(-1, best), suml2.gather(-1, best)
    scale = torch.where(l2 > 0, lx / torch.where(l2 > 0, l2, 1), 0.0)
    return torch.where(amax < _EPS, 0.0, scale).squeeze(-1)


def fit_asymmetric(x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float = -0.9, rdelta: float = 0.05,
                   nstep: int = 36) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qkx3_quants: codes in [0, nmax] with value = scale·l + min (min ≤ 0). For each candidate
    inverse scale it rounds, then solves the 2×2 weighted least squares for (scale, min); the
    candidate with the least weighted squared error wins. Returns (scale, min) per block."""
    xmin = x.min(-1, keepdim=True).values.clamp(max=0)
    xmax = x.max(-1, keepdim=True).values
    span = xmax - xmin
    flat = span <= 0
    span = torch.where(flat, torch.ones_like(span), span)
    steps = rmin + rdelta * torch.arange(0, nstep + 1, device=x.device, dtype=x.dtype)
    iscale = torch.cat([torch.full_like(span, float(nmax)), nmax + steps.unsqueeze(0).expand(x.shape[0], -1)], -1) / span
    q = (iscale.unsqueeze(-1) * (x - xmin).unsqueeze(1)).round_().clamp_(0, nmax)  # [B, C, n]
    wq = w.unsqueeze(1) * q
    sum_w = w.sum(-1, keepdim=True)
    sum_x = (w * x).sum(-1, keepdim=True)
    sum_x2 = (w * x * x).sum(-1, keepdim=True)
    sum_l = wq.sum(-1)
    sum_xl = (wq * x.unsqueeze(1)).sum(-1)
    sum_l2 = wq.mul_(q).sum(-1)
    del wq, q
    det = sum_w * sum_l2 - sum_l * sum_l
    ok = det > 0
    det_safe = torch.where(ok, det, torch.ones_like(det))
    scale = (sum_w * sum_xl - sum_x * sum_l) / det_safe
    mn = (sum_l2 * sum_x - sum_l * sum_xl) / det_safe
    positive = mn > 0
    scale = torch.where(positive, sum_xl / torch.where(sum_l2 > 0, sum_l2, 1), scale)
    mn = torch.where(positive, 0.0, mn)
    # candidate 0 keeps the plain min/max grid (llama.cpp's starting point)
    scale[:, :1] = 1.0 / iscale[:, :1]
    mn[:, :1] = xmin
    ok[:, :1] = True
    # Σw(s·l + m − x)² expanded into the sums above: no [B, C, n] temporary
    err = (scale * scale * sum_l2 + 2 * scale * mn * sum_l - 2 * scale * sum_xl + mn * mn * sum_w
           - 2 * mn * sum_x + sum_x2)
    err = torch.where(ok, err, torch.full_like(err, float("inf")))
    best = err.argmin(-1, keepdim=True)
    scale = torch.where(flat, 0.0, scale.gather(-1, best)).squeeze(-1)
    mn = torch.where(flat, xmin, mn.gather(-1, best)).squeeze(-1)
    return scale, mn


def fit_nonnegative(x: torch.Tensor, w: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qp_quants, for the sub-block scales/minimums of the k-quants (x ≥ 0): codes in [0, nmax]
    for 9 candidate scales, keep the least weighted error, then the least-squares super-scale.
    Returns (super-scale [B], codes [B, n] int)."""
    vmax = x.max(-1, keepdim=True).values
    zero = vmax < _EPS
    safe = torch.where(zero, torch.ones_like(vmax), vmax)
    steps = torch.arange(-4, 5, device=x.device, dtype=x.dtype) * 0.1
    iscale = (nmax + steps) / safe  # [B, C]
    q = torch.clamp(torch.round(iscale.unsqueeze(-1) * x.unsqueeze(1)), 0, nmax)
    diff = x.unsqueeze(1) - q / iscale.unsqueeze(-1)
    err = (w.unsqueeze(1) * diff * diff).sum(-1)
    best = err.argmin(-1)
    codes = q[torch.arange(x.shape[0], device=x.device), best]
    sumlx = (w * x * codes).sum(-1)
    suml2 = (w * codes * codes).sum(-1)
    fallback = 1.0 / iscale.gather(-1, best.unsqueeze(-1)).squeeze(-1)
    scale = torch.where(suml2 > 0, sumlx / torch.where(suml2 > 0, suml2, 1), fallback)
    scale = torch.where(zero.squeeze(-1), 0.0, scale)
    codes = torch.where(zero, torch.zeros_like(codes), codes)
    return scale, codes.to(torch.int32)


def fit_signed_scales(x: torch.Tensor, w: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qx_quants applied to signed sub-block scales (Q3_K): super-scale and codes in [-nmax, nmax-1]."""
    d = _fp16(fit_symmetric(x, w, nmax))
    safe = torch.where(d == 0, torch.ones_like(d), d)
    codes = torch.clamp(torch.round(x / safe.unsqueeze(-1)), -nmax, nmax - 1)
    return d, torch.where((d == 0).unsqueeze(-1), torch.zeros_like(codes), codes).to(torch.int32)


def _nearest_iq4(v: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Index of the nearest grid value (ties to the upper one, as best_index_int8)."""
    mids = (values[1:] + values[:-1]) / 2
    return torch.bucketize(v, mids, right=True)


# --------------------------------------------------------------------------------------------
# packing helpers


def _f16_bytes(t: torch.Tensor) -> torch.Tensor:
    """[B] float → [B, 2] little-endian fp16 bytes."""
    return t.to(torch.float16).contiguous().view(torch.int16).unsqueeze(-1).view(torch.uint8).reshape(-1, 2)


def _nibbles(q: torch.Tensor) -> torch.Tensor:
    """[B, 32] codes 0..15 → [B, 16] bytes: q[j] | q[j+16] << 4 (the 32-block layout)."""
    return (q[:, :16] & 15) | ((q[:, 16:32] & 15) << 4)


def _bits32(bits: torch.Tensor) -> torch.Tensor:
    """[B, 32] bits → [B, 4] bytes of a little-endian uint32 whose bit j is bits[:, j]."""
    shifts = torch.arange(8, device=bits.device, dtype=torch.int32)
    return (bits.reshape(-1, 4, 8) << shifts).sum(-1)


def _u8(*parts: torch.Tensor) -> torch.Tensor:
    return torch.cat([p.to(torch.int32) if p.dtype != torch.uint8 else p.to(torch.int32) for p in parts], -1).to(torch.uint8)


def _pack_k_scales(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """Eight 6-bit scales and minimums → the 12 bytes of Q4_K/Q5_K (get_scale_min_k4's inverse)."""
    s = torch.zeros(ls.shape[0], 12, dtype=torch.int32, device=ls.device)
    s[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    s[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    s[:, 8:12] = (ls[:, 4:8] & 15) | ((lm[:, 4:8] & 15) << 4)
    return s


def _pack_2bit(q: torch.Tensor) -> torch.Tensor:
    """[B, 256] codes 0..3 → [B, 64]: byte h·32+l holds q[h·128 + k·32 + l] at bits 2k."""
    shifts = torch.arange(0, 8, 2, device=q.device, dtype=torch.int32).view(1, 1, 4, 1)
    return ((q.reshape(-1, 2, 4, 32) & 3) << shifts).sum(2).reshape(-1, 64)


# --------------------------------------------------------------------------------------------
# encoders: x [B, block] float32 (one row's blocks at a time stacked), qw [B, block] importance,
# row_sigma2 [B, 1] (σ² of the block's row, for the 32-block types) → [B, type_size] uint8


def _legacy_weights(x, qw, row_sigma2):
    return _safe_weights(qw * torch.sqrt(row_sigma2 + x * x))


def _enc_q8_0(x, qw, row_sigma2):
    # llama.cpp ignores the imatrix for Q8_0: amax/127 is already within its grid's precision.
    d = x.abs().max(-1).values / 127
    dq = _fp16(d)
    q = torch.round(x / torch.where(dq == 0, 1, dq).unsqueeze(-1)).clamp(-128, 127)
    q = torch.where((dq == 0).unsqueeze(-1), 0, q).to(torch.int32) & 0xFF
    return _u8(_f16_bytes(d), q)


def _symmetric_codes(x, d, nmax):
    safe = torch.where(d == 0, torch.ones_like(d), d)
    q = torch.clamp(torch.round(x / safe.unsqueeze(-1)), -nmax, nmax - 1)
    return (torch.where((d == 0).unsqueeze(-1), 0, q) + nmax).to(torch.int32)


def _enc_q4_0(x, qw, row_sigma2):
    d = _fp16(fit_symmetric(x, _legacy_weights(x, qw, row_sigma2), 8))
    q = _symmetric_codes(x, d, 8)
    return _u8(_f16_bytes(d), _nibbles(q))


def _enc_q5_0(x, qw, row_sigma2):
    d = _fp16(fit_symmetric(x, _legacy_weights(x, qw, row_sigma2), 16))
    q = _symmetric_codes(x, d, 16)
    return _u8(_f16_bytes(d), _bits32(q >> 4), _nibbles(q))


def _affine_codes(x, d, m, nmax):
    safe = torch.where(d == 0, torch.ones_like(d), d)
    q = torch.clamp(torch.round((x - m.unsqueeze(-1)) / safe.unsqueeze(-1)), 0, nmax)
    return torch.where((d == 0).unsqueeze(-1), 0, q).to(torch.int32)


def _enc_q4_1(x, qw, row_sigma2):
    scale, mn = fit_asymmetric(x, _legacy_weights(x, qw, row_sigma2), 15)
    d, m = _fp16(scale), _fp16(mn)
    q = _affine_codes(x, d, m, 15)
    return _u8(_f16_bytes(d), _f16_bytes(m), _nibbles(q))


def _enc_q5_1(x, qw, row_sigma2):
    scale, mn = fit_asymmetric(x, _legacy_weights(x, qw, row_sigma2), 31)
    d, m = _fp16(scale), _fp16(mn)
    q = _affine_codes(x, d, m, 31)
    return _u8(_f16_bytes(d), _f16_bytes(m), _bits32(q >> 4), _nibbles(q))


def _enc_iq4_nl(x, qw, row_sigma2):
    values = torch.tensor(IQ4_NL_VALUES, dtype=x.dtype, device=x.device)
    sigma2 = 2 * (x * x).mean(-1, keepdim=True)  # per 32-block, as quantize_row_iq4_nl_impl
    w = _safe_weights(qw * torch.sqrt(sigma2 + x * x))
    amax, idx = x.abs().max(-1, keepdim=True)
    vmax = x.gather(-1, idx)
    safe = torch.where(amax < _EPS, torch.ones_like(vmax), vmax)
    tries = torch.arange(-7, 8, device=x.device, dtype=x.dtype)
    inv = torch.cat([-values[0] / safe, (tries + values[0]) / safe], -1)  # [B, 16] candidate 1/d
    q = values[_nearest_iq4(inv.unsqueeze(-1) * x.unsqueeze(1), values)]  # [B, C, 32] grid values
    sumqx = (w.unsqueeze(1) * q * x.unsqueeze(1)).sum(-1)
    sumq2 = (w.unsqueeze(1) * q * q).sum(-1)
    score = torch.where(sumq2 > 0, sumqx * sumqx / torch.where(sumq2 > 0, sumq2, 1), -1.0)
    best = score.argmax(-1, keepdim=True)
    qx, q2 = sumqx.gather(-1, best), sumq2.gather(-1, best)
    d = torch.where((q2 > 0) & (amax >= _EPS), qx / torch.where(q2 > 0, q2, 1), 0.0).squeeze(-1)
    d = _fp16(d)
    inv_d = torch.where(d == 0, 0.0, 1 / torch.where(d == 0, 1, d))
    codes = _nearest_iq4(inv_d.unsqueeze(-1) * x, values).to(torch.int32)
    return _u8(_f16_bytes(d), _nibbles(codes))


def _kquant_weights(x, qw, factor):
    """qw·sqrt(σ² + x²) with σ² = factor·mean(x²) over the 256-weight super-block."""
    sigma2 = factor * (x * x).mean(-1, keepdim=True)
    return qw * torch.sqrt(sigma2 + x * x)


def _enc_q2_k(x, qw, row_sigma2):
    B = x.shape[0]
    w = _kquant_weights(x, qw, 1.0).reshape(B * 16, 16)
    xs = x.reshape(B * 16, 16)
    w = _safe_weights(w)
    scale, mn = fit_asymmetric(xs, w, 3)
    sw = w.sum(-1).reshape(B, 16)
    dm, ls = fit_nonnegative(scale.reshape(B, 16), sw, 15)
    mm, lm = fit_nonnegative((-mn).reshape(B, 16), sw, 15)
    d, dmin = _fp16(dm), _fp16(mm)
    dl = (d.unsqueeze(-1) * ls).reshape(B * 16)
    ml = (dmin.unsqueeze(-1) * lm).reshape(B * 16)
    q = torch.clamp(torch.round((xs + ml.unsqueeze(-1)) / torch.where(dl == 0, 1, dl).unsqueeze(-1)), 0, 3)
    q = torch.where((dl == 0).unsqueeze(-1), 0, q).to(torch.int32).reshape(B, 256)
    return _u8(ls | (lm << 4), _pack_2bit(q), _f16_bytes(d), _f16_bytes(dmin))


def _enc_q3_k(x, qw, row_sigma2):
    B = x.shape[0]
    w = _safe_weights(_kquant_weights(x, qw, 2.0).reshape(B * 16, 16))
    xs = x.reshape(B * 16, 16)
    scales = fit_symmetric(xs, w, 4).reshape(B, 16)
    sw = w.sum(-1).reshape(B, 16)
    d, ls = fit_signed_scales(scales, sw, 32)  # ls in [-32, 31]
    dl = (d.unsqueeze(-1) * ls).reshape(B * 16)
    q = torch.clamp(torch.round(xs / torch.where(dl == 0, 1, dl).unsqueeze(-1)), -4, 3) + 4
    q = torch.where((dl == 0).unsqueeze(-1), 4, q).to(torch.int32).reshape(B, 256)
    hbits = (q >> 2).reshape(B, 8, 32)
    hmask = (hbits << torch.arange(8, device=x.device, dtype=torch.int32).view(1, 8, 1)).sum(1)
    lsu = ls + 32
    sc = torch.zeros(B, 12, dtype=torch.int32, device=x.device)
    sc[:, 0:8] = (lsu[:, 0:8] & 15) | ((lsu[:, 8:16] & 15) << 4)
    high = (lsu >> 4).reshape(B, 4, 4)  # [j // 4, j % 4]
    sc[:, 8:12] = (high << (2 * torch.arange(4, device=x.device, dtype=torch.int32)).view(1, 4, 1)).sum(1)
    return _u8(hmask, _pack_2bit(q & 3), sc, _f16_bytes(d))


def _enc_q45_k(x, qw, nmax):
    B = x.shape[0]
    w = _safe_weights(_kquant_weights(x, qw, 2.0).reshape(B * 8, 32))
    xs = x.reshape(B * 8, 32)
    scale, mn = fit_asymmetric(xs, w, nmax)
    sw = w.sum(-1).reshape(B, 8)
    dm, ls = fit_nonnegative(scale.reshape(B, 8), sw, 63)
    mm, lm = fit_nonnegative((-mn).reshape(B, 8), sw, 63)
    d, dmin = _fp16(dm), _fp16(mm)
    dl = (d.unsqueeze(-1) * ls).reshape(B * 8)
    ml = (dmin.unsqueeze(-1) * lm).reshape(B * 8)
    q = torch.clamp(torch.round((xs + ml.unsqueeze(-1)) / torch.where(dl == 0, 1, dl).unsqueeze(-1)), 0, nmax)
    q = torch.where((dl == 0).unsqueeze(-1), 0, q).to(torch.int32).reshape(B, 4, 2, 32)
    qs = ((q[:, :, 0] & 15) | ((q[:, :, 1] & 15) << 4)).reshape(B, 128)
    head = (_f16_bytes(d), _f16_bytes(dmin), _pack_k_scales(ls, lm))
    if nmax == 15:
        return _u8(*head, qs)
    hbits = (q >> 4).reshape(B, 8, 32)  # bit 2c + half for element c·64 + half·32 + l
    qh = (hbits << torch.arange(8, device=x.device, dtype=torch.int32).view(1, 8, 1)).sum(1)
    return _u8(*head, qh, qs)


def _enc_q4_k(x, qw, row_sigma2):
    return _enc_q45_k(x, qw, 15)


def _enc_q5_k(x, qw, row_sigma2):
    return _enc_q45_k(x, qw, 31)


def _enc_q6_k(x, qw, row_sigma2):
    B = x.shape[0]
    xs = x.reshape(B * 16, 16)
    w = _safe_weights(qw.reshape(B * 16, 16))  # llama.cpp's Q6_K uses the imatrix as is
    scales = fit_symmetric(xs, w, 32).reshape(B, 16)
    amax, idx = scales.abs().max(-1, keepdim=True)
    smax = scales.gather(-1, idx)
    zero = (amax < _EPS).squeeze(-1)
    iscale = -128.0 / torch.where(amax < _EPS, torch.ones_like(smax), smax)
    d = torch.where(zero, 0.0, _fp16(1 / iscale).squeeze(-1))
    ls = torch.clamp(torch.round(iscale * scales), max=127)
    ls = torch.where(zero.unsqueeze(-1), 0, ls).to(torch.int32)
    dl = (d.unsqueeze(-1) * ls).reshape(B * 16)
    q = torch.clamp(torch.round(xs / torch.where(dl == 0, 1, dl).unsqueeze(-1)), -32, 31) + 32
    q = torch.where((dl == 0).unsqueeze(-1), 32, q).to(torch.int32).reshape(B, 2, 4, 32)
    ql = ((q[:, :, 0:2] & 15) | ((q[:, :, 2:4] & 15) << 4)).reshape(B, 128)
    qh = ((q >> 4) << torch.arange(0, 8, 2, device=x.device, dtype=torch.int32).view(1, 1, 4, 1)).sum(2).reshape(B, 64)
    return _u8(ql, qh, ls & 0xFF, _f16_bytes(d))


_ENCODERS: dict[str, Callable] = {
    "Q8_0": _enc_q8_0,
    "Q4_0": _enc_q4_0,
    "Q4_1": _enc_q4_1,
    "Q5_0": _enc_q5_0,
    "Q5_1": _enc_q5_1,
    "IQ4_NL": _enc_iq4_nl,
    "Q2_K": _enc_q2_k,
    "Q3_K": _enc_q3_k,
    "Q4_K": _enc_q4_k,
    "Q5_K": _enc_q5_k,
    "Q6_K": _enc_q6_k,
}


@torch.no_grad()
def quantize(weight: torch.Tensor, qtype: str, importance: torch.Tensor | None = None, *,
             name: str = "tensor") -> np.ndarray:
    """Encode a [rows, cols] tensor (or 1-D for float types) as `qtype`; returns the uint8 bytes as
    a [rows, row_bytes] array (float types: the array in their dtype). `importance` is one
    non-negative number per column (E[x²] of the inputs); None counts columns equally."""
    qt = quant_type(qtype)
    if qt.name in FLOAT_TYPES:
        data = weight.detach().to(torch.float32).cpu()
        if qt.name == "F32":
            return data.numpy().copy()
        if qt.name == "F16":
            return data.to(torch.float16).numpy()
        return data.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).view(np.uint8).reshape(
            *data.shape[:-1], -1)
    if weight.dim() != 2:
        raise EvoError(f"tensor {name} has shape {tuple(weight.shape)}: only 2-D weights can be stored as {qt.name}")
    check_allowed(name, tuple(weight.shape), qt.name)
    x = checked_weight(weight, name)
    qw = checked_importance(importance, x.shape[1], name, x.device)
    row_sigma2 = (x * x).mean(-1, keepdim=True)  # σ² of each row (quantize_row_q4_0_impl & co.)
    return encode_rows(x, qt.name, qw, row_sigma2).cpu().numpy()


def checked_weight(weight: torch.Tensor, name: str) -> torch.Tensor:
    """The weight as float32 (on its device), or an EvoError naming the tensor when it holds NaN/inf."""
    x = weight.detach().to(torch.float32)
    if not torch.isfinite(x).all():
        raise EvoError(f"tensor {name} holds NaN or inf values: it cannot be quantized")
    return x


def checked_importance(importance: torch.Tensor | None, cols: int, name: str, device) -> torch.Tensor:
    """One non-negative float32 per column on `device` (ones when None), or an EvoError naming the tensor."""
    if importance is None:
        return torch.ones(cols, dtype=torch.float32, device=device)
    qw = importance.detach().to(device=device, dtype=torch.float32).reshape(-1)
    if qw.numel() != cols or not torch.isfinite(qw).all() or (qw < 0).any():
        raise EvoError(f"importance for tensor {name} must be {cols} finite non-negative numbers, one per column")
    return qw


def encode_rows(x: torch.Tensor, qtype: str, qw: torch.Tensor, row_sigma2: torch.Tensor) -> torch.Tensor:
    """The bytes [rows, cols/block·type_size] (uint8, on x's device) of float32 x [rows, cols] (cols a
    multiple of the block) with per-column importance qw [cols] and per-row σ² [rows, 1]. Block-local:
    a block's bytes depend only on its weights, its columns' importance and its row's σ² (which the
    32-block types weight by), so a row encoded block by block with its σ² given is these bytes
    concatenated (evo.gguf.gptq encodes that way)."""
    qt = quant_type(qtype)
    rows, cols = x.shape
    nb = cols // qt.block_size
    encoder = _ENCODERS[qt.name]
    qw_blocks = qw.reshape(nb, qt.block_size)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // (cols * 40))
    out = torch.empty(rows, nb * qt.type_size, dtype=torch.uint8, device=x.device)
    for start in range(0, rows, rows_per_chunk):
        stop = min(rows, start + rows_per_chunk)
        xb = x[start:stop].reshape(-1, qt.block_size)
        qwb = qw_blocks.repeat(stop - start, 1)
        s2 = row_sigma2[start:stop].repeat_interleave(nb, 0)
        out[start:stop] = encoder(xb, qwb, s2).reshape(stop - start, -1)
    return out


# --------------------------------------------------------------------------------------------
# decoders: mirror gguf.quants' float32 operations exactly (same products, same order)


def _f16_read(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float16).to(torch.float32)


def _low_high(qs: torch.Tensor) -> torch.Tensor:
    """[B, 16] bytes → [B, 32] nibbles: low nibbles first, then high (the 32-block layout)."""
    return torch.cat([qs & 15, qs >> 4], -1)


def _dec_q8_0(b):
    return b[:, 2:].contiguous().view(torch.int8).to(torch.float32) * _f16_read(b[:, :2])


def _dec_q4_0(b):
    return _f16_read(b[:, :2]) * (_low_high(b[:, 2:]).to(torch.int8) - 8).to(torch.float32)


def _dec_q4_1(b):
    return _f16_read(b[:, :2]) * _low_high(b[:, 4:]).to(torch.float32) + _f16_read(b[:, 2:4])


def _high_bits(qh: torch.Tensor) -> torch.Tensor:
    """[B, 4] bytes of a little-endian uint32 → [B, 32] bits."""
    shifts = torch.arange(8, device=qh.device, dtype=torch.uint8)
    return ((qh.unsqueeze(-1) >> shifts) & 1).reshape(-1, 32)


def _dec_q5_0(b):
    q = _low_high(b[:, 6:]) | (_high_bits(b[:, 2:6]) << 4)
    return _f16_read(b[:, :2]) * (q.to(torch.int8) - 16).to(torch.float32)


def _dec_q5_1(b):
    q = _low_high(b[:, 8:]) | (_high_bits(b[:, 4:8]) << 4)
    return _f16_read(b[:, :2]) * q.to(torch.float32) + _f16_read(b[:, 2:4])


def _dec_iq4_nl(b):
    values = torch.tensor(IQ4_NL_VALUES, dtype=torch.float32, device=b.device)
    return _f16_read(b[:, :2]) * values[_low_high(b[:, 2:]).long()]


def _unpack_2bit(qs: torch.Tensor) -> torch.Tensor:
    shifts = torch.arange(0, 8, 2, device=qs.device, dtype=torch.uint8).view(1, 1, 4, 1)
    return ((qs.reshape(-1, 2, 1, 32) >> shifts) & 3).reshape(-1, 256)


def _dec_q2_k(b):
    B = b.shape[0]
    scales, qs, d, dmin = b[:, :16], b[:, 16:80], _f16_read(b[:, 80:82]), _f16_read(b[:, 82:84])
    dl = (d * (scales & 15).to(torch.float32)).reshape(B, 16, 1)
    ml = (dmin * (scales >> 4).to(torch.float32)).reshape(B, 16, 1)
    q = _unpack_2bit(qs).reshape(B, 16, 16).to(torch.float32)
    return (dl * q - ml).reshape(B, 256)


def _dec_q3_k(b):
    B = b.shape[0]
    hmask, qs, sc, d = b[:, :32], b[:, 32:96], b[:, 96:108], _f16_read(b[:, 108:110])
    low = torch.cat([sc[:, :8] & 15, sc[:, :8] >> 4], -1)
    high = ((sc[:, 8:12].reshape(B, 1, 4) >> torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=b.device).view(1, 4, 1)) & 3).reshape(B, 16)
    scales = ((low | (high << 4)).to(torch.int8) - 32).to(torch.float32)
    dl = (d * scales).reshape(B, 16, 1)
    ql = _unpack_2bit(qs).reshape(B, 16, 16)
    hb = ((hmask.reshape(B, 1, 32) >> torch.arange(8, dtype=torch.uint8, device=b.device).view(1, 8, 1)) & 1).reshape(B, 16, 16)
    q = (ql.to(torch.int8) - ((hb ^ 1) << 2).to(torch.int8)).to(torch.float32)
    return (dl * q).reshape(B, 256)


def _k_scale_min(sc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d, m, md = sc[:, 0:4], sc[:, 4:8], sc[:, 8:12]
    scale = torch.cat([d & 63, (md & 15) | ((d >> 2) & 0x30)], -1)
    mins = torch.cat([m & 63, (md >> 4) | ((m >> 2) & 0x30)], -1)
    return scale, mins


def _dec_q45_k(b, five: bool):
    B = b.shape[0]
    d, dmin = _f16_read(b[:, 0:2]), _f16_read(b[:, 2:4])
    sc, mins = _k_scale_min(b[:, 4:16])
    dl = (d * sc.to(torch.float32)).reshape(B, 8, 1)
    dm = (dmin * mins.to(torch.float32)).reshape(B, 8, 1)
    qs = b[:, 48:] if five else b[:, 16:]
    q = ((qs.reshape(B, 4, 1, 32) >> torch.tensor([0, 4], dtype=torch.uint8, device=b.device).view(1, 1, 2, 1)) & 15).reshape(B, 8, 32)
    if five:
        qh = ((b[:, 16:48].reshape(B, 1, 32) >> torch.arange(8, dtype=torch.uint8, device=b.device).view(1, 8, 1)) & 1)
        q = q | (qh.reshape(B, 8, 32) << 4)
    return (dl * q.to(torch.float32) - dm).reshape(B, 256)


def _dec_q6_k(b):
    B = b.shape[0]
    ql, qh, sc, d = b[:, :128], b[:, 128:192], b[:, 192:208], _f16_read(b[:, 208:210])
    dl = (d * sc.contiguous().view(torch.int8).to(torch.float32)).reshape(B, 16, 1)
    low = ((ql.reshape(B, 2, 1, 64) >> torch.tensor([0, 4], dtype=torch.uint8, device=b.device).view(1, 1, 2, 1)) & 15).reshape(B, 8, 32)
    high = ((qh.reshape(B, 2, 1, 32) >> torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=b.device).view(1, 1, 4, 1)) & 3).reshape(B, 8, 32)
    q = ((low | (high << 4)).to(torch.int8) - 32).reshape(B, 16, 16).to(torch.float32)
    return (dl * q).reshape(B, 256)


_DECODERS: dict[str, Callable] = {
    "Q8_0": _dec_q8_0,
    "Q4_0": _dec_q4_0,
    "Q4_1": _dec_q4_1,
    "Q5_0": _dec_q5_0,
    "Q5_1": _dec_q5_1,
    "IQ4_NL": _dec_iq4_nl,
    "Q2_K": _dec_q2_k,
    "Q3_K": _dec_q3_k,
    "Q4_K": lambda b: _dec_q45_k(b, False),
    "Q5_K": lambda b: _dec_q45_k(b, True),
    "Q6_K": _dec_q6_k,
}


@torch.no_grad()
def dequantize(data: np.ndarray | torch.Tensor, qtype: str, shape: tuple[int, ...],
               device: str | torch.device = "cpu") -> torch.Tensor:
    """The float32 tensor of `shape` that ggml (and gguf.quants.dequantize) reads from these bytes."""
    qt = quant_type(qtype)
    if isinstance(data, np.ndarray):
        raw = torch.from_numpy(np.ascontiguousarray(data).view(np.uint8).reshape(-1))
    else:
        raw = data.reshape(-1).view(torch.uint8) if data.dtype != torch.uint8 else data.reshape(-1)
    raw = raw.to(device)
    if qt.name == "F32":
        return raw.view(torch.float32).reshape(shape).clone()
    if qt.name == "F16":
        return raw.view(torch.float16).to(torch.float32).reshape(shape)
    if qt.name == "BF16":
        return raw.view(torch.bfloat16).to(torch.float32).reshape(shape)
    blocks = raw.reshape(-1, qt.type_size)
    out = torch.empty(blocks.shape[0], qt.block_size, dtype=torch.float32, device=raw.device)
    step = max(1, _CHUNK_ELEMENTS // qt.block_size)
    for start in range(0, blocks.shape[0], step):
        out[start:start + step] = _DECODERS[qt.name](blocks[start:start + step])
    return out.reshape(shape)
