"""Fast dequantization of bit-packed codes for the "codes" resident mode: written into reused
buffers in the compute dtype, a cache-sized block of rows at a time, with no per-call float32
temporaries of the whole matrix; on CUDA a torch.compile'd kernel checked once against the eager one.

Every path computes evo.compress.dequantize's arithmetic to the bit: the same float32 operations
in the same order ((code - midpoint) · step, (code - zero) · step, or code · step + minimum), then
one cast to the compute dtype, so "codes" keeps the dense model's logits exactly.
"""

from __future__ import annotations

import os
import threading
import types
import warnings
from dataclasses import dataclass, replace
from functools import lru_cache

import torch

from evo.compress.grid import effective_group_size, symmetric_midpoint
from evo.runtime.packing import CODES_PER_WORD, unpack_codes

# Rows dequantized per block: ~1 M weights (4 MB of float32, 1 MB of codes), so the passes over a
# block stay in cache while each block is ~25 tensor ops. Smaller blocks (256 K, in L2) were no
# faster on one thread and several times slower on two threads of a busy CPU, where every op's
# parallel region waits for a descheduled thread (measured on the 2-core dev machine under load).
BLOCK_WEIGHTS = 1 << 20

# "0" turns the CUDA compiled kernel off (the eager blocks then run everywhere).
COMPILE_ENV = "EVO_RUNTIME_COMPILE"


@dataclass(frozen=True)
class DequantLayout:
    """What the arithmetic of one packed matrix depends on (hashable: it keys compiled kernels)."""

    bits: int
    rows: int
    columns: int
    group: int  # columns per scale; == columns for per-channel
    kind: str  # "symmetric" | "int" | "float" (zero-point kind)

    @property
    def full_groups(self) -> int:
        return self.columns // self.group

    @property
    def tail(self) -> int:
        return self.columns - self.full_groups * self.group


def layout_of(setting, shape: tuple[int, int]) -> DequantLayout:
    rows, columns = shape
    kind = "symmetric" if setting.symmetric else setting.zero_point
    return DequantLayout(setting.bits, rows, columns, effective_group_size(columns, setting.group_size), kind)


# --- scratch buffers -----------------------------------------------------------------------------


class ScratchBuffers(threading.local):
    """Flat buffers per (slot, device, dtype), grown to the largest request and then reused by every
    matrix: one thread's forward uses each slot for one matrix at a time (the matmul reads the
    weight before the next matrix is dequantized). Thread-local, so concurrent forwards do not share."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    def get(self, slot: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        numel = 1
        for n in shape:
            numel *= n
        key = (slot, torch.device(device), dtype)
        buffer = self.buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            self.buffers.pop(key, None)  # free the old one before allocating its successor
            buffer = self.buffers[key] = torch.empty(numel, dtype=dtype, device=device)
        return buffer[:numel].view(shape)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers.values())

    def clear(self) -> None:
        self.buffers.clear()


SCRATCH = ScratchBuffers()


def scratch_bytes() -> int:
    """Bytes of the dequantization buffers this thread holds (the largest matrix in the compute
    dtype, plus a block of codes and, for bf16/fp16, a float32 block)."""
    return SCRATCH.nbytes


def release_scratch() -> None:
    """Free this thread's dequantization buffers (they are allocated again on the next forward)."""
    SCRATCH.clear()


# --- eager blocks ----------------------------------------------------------------------------------


def _grouped(t: torch.Tensor, layout: DequantLayout) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[n, columns] → the full groups as [n, G, group] and the ragged tail [n, tail] (or None)."""
    full = layout.full_groups * layout.group
    head = t[:, :full].view(t.shape[0], layout.full_groups, layout.group)
    return head, (t[:, full:] if layout.tail else None)


def _per_group(values: torch.Tensor, layout: DequantLayout) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[n, groups] → broadcastable against _grouped's parts."""
    head = values[:, : layout.full_groups].unsqueeze(-1)
    return head, (values[:, layout.full_groups :] if layout.tail else None)


def dequantize_block(
    codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, layout: DequantLayout, out: torch.Tensor
) -> None:
    """Unpacked uint8 codes [n, columns] → float32 `out` [n, columns], evo's dequantize exactly:
    three vectorised passes over `out` (convert, centre or scale, scale or shift), no temporaries
    of out's size. (A type-promoting torch.sub(uint8, float, out=) takes ~3× a plain copy_.)"""
    out.copy_(codes)  # exact: codes < 256
    step_parts = _per_group(scales.float(), layout)
    out_parts = _grouped(out, layout)
    if layout.kind == "float":  # code · step + minimum, two roundings as in dequantize
        zero_parts = _per_group(zeros.float(), layout)
        for o, s, z in zip(out_parts, step_parts, zero_parts):
            if o is not None:
                o.mul_(s).add_(z)
        return
    if layout.kind == "symmetric":  # (code - midpoint) · step: the difference is exact in float32
        out.sub_(float(symmetric_midpoint(layout.bits)))
    else:  # (code - zero) · step
        for o, z in zip(out_parts, _per_group(zeros.float(), layout)):
            if o is not None:
                o.sub_(z)
    for o, s in zip(out_parts, step_parts):
        if o is not None:
            o.mul_(s)


def dequantize_packed_eager(packed, out: torch.Tensor) -> torch.Tensor:
    """The whole packed matrix into `out` ([rows, columns], the compute dtype), block by block."""
    layout = packed.layout
    rows, columns = layout.rows, layout.columns
    step = max(1, BLOCK_WEIGHTS // max(columns, 1))
    device = packed.codes.device
    direct = out.dtype == torch.float32
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        n = stop - start
        padded = -(-columns // CODES_PER_WORD) * CODES_PER_WORD
        codes = unpack_codes(
            packed.codes[start:stop], layout.bits, columns, out=SCRATCH.get("codes", (n, padded), torch.uint8, device)
        )
        zeros = packed.zeros
        if zeros is not None:
            zeros = zeros[start:stop]
            if packed.int_zeros:
                zeros = unpack_codes(zeros, layout.bits, packed.groups)
        target = out[start:stop] if direct else SCRATCH.get("block", (n, columns), torch.float32, device)
        dequantize_block(codes, packed.scales[start:stop], zeros, layout, target)
        if not direct:
            out[start:stop].copy_(target)
    return out


# --- compiled (CUDA) -------------------------------------------------------------------------------


def _unpack_all(packed: torch.Tensor, bits: int, columns: int) -> torch.Tensor:
    """unpack_codes (evo.runtime.packing's planar layout) without an out= buffer: traceable by
    torch.compile, which fuses it with the arithmetic."""
    rows = packed.shape[0]
    planes = packed.reshape(rows, bits, -1)
    mask = (1 << bits) - 1
    parts = []
    for i in range(CODES_PER_WORD):
        byte, shift = divmod(bits * i, 8)
        code = planes[:, byte] >> shift
        if shift + bits > 8:
            code = code | (planes[:, byte + 1] << (8 - shift))
        parts.append(code & mask if shift + bits != 8 else code)
    return torch.stack(parts, dim=1).reshape(rows, -1)[:, :columns]


def _reference_math(codes_packed, scales, zeros, layout: DequantLayout, int_zeros: bool, groups: int, dtype):
    """evo's dequantize on packed inputs, in one traceable function (the compiled kernel's body)."""
    codes = _unpack_all(codes_packed, layout.bits, layout.columns)
    index = torch.arange(layout.columns, device=codes.device) // layout.group
    step = scales.float().index_select(1, index)
    if layout.kind == "symmetric":
        weight = (codes.float() - symmetric_midpoint(layout.bits)) * step
    else:
        if int_zeros:
            zeros = _unpack_all(zeros, layout.bits, groups)
        zero = zeros.float().index_select(1, index)
        weight = (codes.float() - zero) * step if layout.kind == "int" else codes.float() * step + zero
    return weight.to(dtype)


def _compiled(layout: DequantLayout, int_zeros: bool, groups: int, dtype: torch.dtype):
    # Matrices that differ only in rows share one compiled kernel (torch.compile turns rows into a
    # dynamic size on the second shape): SmolLM2's 211 matrices need 3-4 compilations, not 7.
    return _compiled_for_columns(replace(layout, rows=0), int_zeros, groups, dtype)


@lru_cache(maxsize=None)
def _compiled_for_columns(layout: DequantLayout, int_zeros: bool, groups: int, dtype: torch.dtype):
    def kernel(codes_packed, scales, zeros):
        return _reference_math(codes_packed, scales, zeros, layout, int_zeros, groups, dtype)

    # Dynamo keeps its compiled graphs on the function's code object. Every layout's `kernel` shares
    # one code object with other closure values, so the second layout (other bits or columns) made
    # dynamo treat those ints as dynamic, and `1 << bits` on a symbolic int failed (seen on the H200
    # with torch 2.11, reproduced on the CPU with 2.13). Each layout gets a code object of its own, with its own
    # name: dynamo keys its automatic-dynamic state by the code's file, line and name.
    name = (f"dequantize_b{layout.bits}_c{layout.columns}_g{layout.group}_{layout.kind}_z{int(int_zeros)}_n{groups}_"
            f"{str(dtype).removeprefix('torch.')}")
    own = types.FunctionType(kernel.__code__.replace(co_name=name, co_qualname=name), kernel.__globals__, name,
                             kernel.__defaults__, kernel.__closure__)
    return torch.compile(own, fullgraph=True)


# (layout, int_zeros, dtype, device) → the compiled kernel agreed with the eager one; per layout
# with its rows, since a kernel recompiled for dynamic rows is new code to check.
_verified: dict[tuple, bool] = {}
_lock = threading.Lock()


def compile_enabled(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get(COMPILE_ENV, "1") != "0"


def dequantize_packed(packed, out: torch.Tensor) -> torch.Tensor:
    """The packed matrix dequantized in out's dtype: the compiled kernel on CUDA (once it has
    matched the eager blocks bit for bit on this layout; otherwise, or when compiling fails, the
    eager blocks, with one warning), else the eager blocks into `out`."""
    device = packed.codes.device
    if not compile_enabled(device):
        return dequantize_packed_eager(packed, out)
    key = (packed.layout, packed.int_zeros, out.dtype, device)
    state = _verified.get(key)
    if state is False:
        return dequantize_packed_eager(packed, out)
    kernel = _compiled(packed.layout, packed.int_zeros, packed.groups, out.dtype)
    try:
        result = kernel(packed.codes, packed.scales, packed.zeros)
    except Exception as error:  # noqa: BLE001 - any compiler failure falls back to the eager path
        with _lock:
            _verified[key] = False
        warnings.warn(f"evo runtime: torch.compile of the dequantize kernel failed ({error!r:.200}); "
                      "using the eager kernel", RuntimeWarning, stacklevel=2)
        return dequantize_packed_eager(packed, out)
    if state is None:
        expected = dequantize_packed_eager(packed, out)
        same = torch.equal(result, expected)
        with _lock:
            _verified[key] = same
        if not same:
            warnings.warn(f"evo runtime: the compiled dequantize kernel differs from the eager one on {packed.layout}; "
                          "using the eager kernel", RuntimeWarning, stacklevel=2)
        return expected
    return result
