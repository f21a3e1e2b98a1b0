"""Modules that stand in for nn.Linear / nn.Embedding while keeping their weight small: bit-packed
codes dequantized in the forward ("codes"), or coded frames decoded by a forward pre-hook into those
bit-packed codes, or into the dense weight for a matrix stored in bf16 ("compressed"). All compute
exactly what the dense module computes with the dequantized weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evo.compress import QuantizedTensor, dequantize
from evo.compress.grid import num_groups
from evo.compress.settings import TensorSetting
from evo.runtime.kernels import SCRATCH, dequantize_packed, dequantize_packed_eager, layout_of
from evo.runtime.packing import pack_codes, packed_row_bytes, unpack_codes

# Rows dequantized at once: bounds the int64/float32 temporaries of unpacking to ~ 8 MB per
# million weights whatever the matrix (a 49152-row embedding would otherwise need ~1 GB).
CHUNK_WEIGHTS = 1 << 20


def dequantize_to(quantized: QuantizedTensor, dtype: torch.dtype) -> torch.Tensor:
    """evo's dequantize cast to `dtype`, a block of rows at a time so that its float32 temporaries
    stay small (dequantization is elementwise, so the result is the same to the bit)."""
    if len(quantized.shape) != 2:
        return dequantize(quantized).to(dtype)
    rows, columns = quantized.shape
    step = max(1, CHUNK_WEIGHTS // max(columns, 1))
    if step >= rows:
        return dequantize(quantized).to(dtype)
    out = torch.empty(quantized.shape, dtype=dtype, device=quantized.codes.device)
    for start in range(0, rows, step):
        part = slice(start, start + step)
        scales = None if quantized.scales is None else quantized.scales[part]
        zeros = None if quantized.zeros is None else quantized.zeros[part]
        codes = quantized.codes[part]
        block = QuantizedTensor(codes, scales, zeros, (codes.shape[0], columns), quantized.setting)
        out[part] = dequantize(block).to(dtype)
    return out


def packed_nbytes(shape: tuple[int, int], setting: TensorSetting) -> int:
    """PackedWeight.nbytes of a quantized matrix of this shape and setting, without building it:
    packed codes, fp16 scales, and packed integer (or fp16 float) zero points."""
    rows, columns = shape
    groups = num_groups(columns, setting.group_size)
    total = rows * packed_row_bytes(columns, setting.bits) + rows * groups * 2
    if not setting.symmetric:
        total += rows * (packed_row_bytes(groups, setting.bits) if setting.zero_point == "int" else groups * 2)
    return total


def held_bytes(weight) -> int:
    """Bytes one decoded weight holds: a PackedWeight's packed tensors, or a tensor's numel · element size."""
    if isinstance(weight, PackedWeight):
        return weight.nbytes
    return weight.numel() * weight.element_size()


def dense_weight(weight) -> torch.Tensor:
    """The dense matrix of a decoded weight (a PackedWeight dequantized, or the tensor itself)."""
    return weight.dequantize() if isinstance(weight, PackedWeight) else weight


class PackedWeight(nn.Module):
    """One quantized matrix kept as bit-packed codes (and packed integer zero points) plus fp16
    scales, as buffers so that .to(device) moves them. `dequantize_rows` is evo's dequantize on
    the rows asked for, cast to `dtype`: element for element the dense model's weight."""

    def __init__(self, quantized: QuantizedTensor, dtype: torch.dtype) -> None:
        super().__init__()
        setting = quantized.setting
        if not setting.quantized:
            raise ValueError("PackedWeight holds quantized matrices; a bits=16 matrix stays dense")
        self.setting: TensorSetting = setting
        self.shape = tuple(quantized.shape)
        self.dtype = dtype
        self.groups = num_groups(self.shape[1], setting.group_size)
        self.layout = layout_of(setting, self.shape)
        self.int_zeros = quantized.zeros is not None and quantized.zeros.dtype == torch.uint8
        self.register_buffer("codes", pack_codes(quantized.codes, setting.bits), persistent=False)
        self.register_buffer("scales", quantized.scales.contiguous(), persistent=False)
        zeros = quantized.zeros
        if zeros is not None:
            zeros = pack_codes(zeros, setting.bits) if self.int_zeros else zeros.contiguous()
        self.register_buffer("zeros", zeros, persistent=False)

    @property
    def nbytes(self) -> int:
        """Bytes held: packed codes, scales and zero points."""
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scales, self.zeros) if t is not None)

    def dequantize_rows(self, rows: slice | torch.Tensor) -> torch.Tensor:
        """The dequantized rows `rows` (a slice or an index tensor) in `dtype`."""
        bits = self.setting.bits
        codes = unpack_codes(self.codes[rows], bits, self.shape[1])
        zeros = self.zeros
        if zeros is not None:
            zeros = unpack_codes(zeros[rows], bits, self.groups) if self.int_zeros else zeros[rows]
        quantized = QuantizedTensor(codes, self.scales[rows], zeros, (codes.shape[0], self.shape[1]), self.setting)
        return dequantize(quantized).to(self.dtype)

    def dequantize(self) -> torch.Tensor:
        """The whole matrix as a new tensor (evo.runtime.kernels' blocks: identical to dequantize)."""
        out = torch.empty(self.shape, dtype=self.dtype, device=self.codes.device)
        return dequantize_packed_eager(self, out)

    def dequantize_scratch(self) -> torch.Tensor:
        """The whole matrix in this thread's reused weight buffer (or the compiled kernel's output on
        CUDA): valid until the next dequantize_scratch of any matrix, so use it at once."""
        out = SCRATCH.get("weight", self.shape, self.dtype, self.codes.device)
        return dequantize_packed(self, out)


class PackedLinear(nn.Module):
    """nn.Linear whose weight is a PackedWeight: dequantize, then F.linear."""

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.packed = packed
        self.out_features, self.in_features = packed.shape
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.packed.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The weight buffer is shared by every PackedLinear of this thread; F.linear has read it
        # (or, on CUDA, queued its read on the stream before any later write) when it returns.
        return F.linear(x, self.packed.dequantize_scratch(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.packed.setting.key()}"


class PackedEmbedding(nn.Module):
    """nn.Embedding whose table is a PackedWeight: only the rows looked up are dequantized."""

    def __init__(self, packed: PackedWeight, padding_idx: int | None) -> None:
        super().__init__()
        self.packed = packed
        self.num_embeddings, self.embedding_dim = packed.shape
        self.padding_idx = padding_idx

    @property
    def weight(self) -> torch.Tensor:
        return self.packed.dequantize()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1).to(self.packed.codes.device)
        return self.packed.dequantize_rows(flat).reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.packed.setting.key()}"


class _Lazy(nn.Module):
    """A module whose weight lives in a DecodedWeights store under `key`: the forward pre-hook
    asks the store for it (decoding its frames unless the store holds it) and the forward uses it
    once; nothing here keeps a reference, so an evicted weight is freed. The store holds a
    PackedWeight (dequantized in the forward, as "codes" does) or, for a bf16 matrix or a weight
    "auto" keeps decoded, the dense tensor."""

    def __init__(self, store, key: str) -> None:
        super().__init__()
        self.store = store
        self.key = key
        # The weight fetched by the pre-hook, in a plain list: a PackedWeight assigned as an
        # attribute would become a registered child module of this one.
        self._fetched: list = []
        self.register_forward_pre_hook(_fetch_weight)

    @property
    def weight(self) -> torch.Tensor:
        return dense_weight(self.store.acquire(self.key))

    def _take(self):
        return self._fetched.pop() if self._fetched else self.store.acquire(self.key)


def _fetch_weight(module: _Lazy, args) -> None:
    module._fetched[:] = [module.store.acquire(module.key)]


class LazyLinear(_Lazy):
    """nn.Linear whose weight is decoded from its frames when it runs."""

    def __init__(self, store, key: str, shape: tuple[int, int], bias: torch.Tensor | None) -> None:
        super().__init__(store, key)
        self.out_features, self.in_features = shape
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self._take()
        if isinstance(weight, PackedWeight):
            weight = weight.dequantize_scratch()  # read by F.linear before the next matrix reuses the buffer
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, key={self.key}"


class LazyEmbedding(_Lazy):
    """nn.Embedding whose table is decoded from its frames when it runs (only the rows looked up are
    dequantized from packed codes)."""

    def __init__(self, store, key: str, shape: tuple[int, int], padding_idx: int | None) -> None:
        super().__init__(store, key)
        self.num_embeddings, self.embedding_dim = shape
        self.padding_idx = padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        weight = self._take()
        if isinstance(weight, PackedWeight):
            flat = ids.reshape(-1).to(weight.codes.device)
            return weight.dequantize_rows(flat).reshape(*ids.shape, self.embedding_dim)
        return F.embedding(ids, weight, self.padding_idx)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, key={self.key}"
