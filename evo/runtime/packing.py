"""Bit-packed integer codes as torch tensors: exactly `bits` bits per code for 2..8 bits, CPU or CUDA.

Each row is packed on its own (padded to a multiple of eight codes, so rows can be unpacked in
chunks) in evo.compress.coding.pack_bits's layout: eight codes fill `bits` bytes, little-endian. Packing
reuses pack_bits; unpacking is done here in torch so that it runs where the model runs.
"""

from __future__ import annotations

import numpy as np
import torch

from evo.compress.coding import pack_bits
from evo.errors import EvoError

CODES_PER_WORD = 8  # eight codes of b bits fill b bytes exactly, for every b


def packed_row_bytes(columns: int, bits: int) -> int:
    """Bytes of one packed row of `columns` codes: ceil(columns / 8) · bits."""
    return -(-columns // CODES_PER_WORD) * bits


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [rows, columns] in [0, 2^bits) → uint8 [rows, ceil(columns/8)·bits] on the CPU."""
    if not 1 <= bits <= 8:
        raise EvoError(f"packed codes take 1..8 bits per code, got bits={bits}")
    if codes.dim() != 2 or codes.dtype != torch.uint8:
        raise EvoError(f"codes to pack must be uint8 [rows, columns], got {codes.dtype} {tuple(codes.shape)}")
    rows, columns = codes.shape
    padded = -(-columns // CODES_PER_WORD) * CODES_PER_WORD
    flat = np.zeros((rows, padded), np.uint8)
    flat[:, :columns] = codes.detach().to("cpu").numpy()
    if flat.size and int(flat.max()) >> bits:
        raise EvoError(f"code {int(flat.max())} does not fit in {bits} bits")
    # Rows hold a whole number of 8-code words, so packing the flat array packs each row alone.
    data = np.frombuffer(pack_bits(flat.reshape(-1), bits), np.uint8).copy()
    return torch.from_numpy(data).reshape(rows, packed_row_bytes(columns, bits))


def unpack_codes(packed: torch.Tensor, bits: int, columns: int) -> torch.Tensor:
    """Inverse of pack_codes for any slice of rows: uint8 [rows, columns] on packed's device."""
    if packed.dim() != 2 or packed.dtype != torch.uint8 or packed.shape[1] != packed_row_bytes(columns, bits):
        raise EvoError(
            f"packed codes must be uint8 [rows, {packed_row_bytes(columns, bits)}], "
            f"got {packed.dtype} {tuple(packed.shape)}"
        )
    rows = packed.shape[0]
    if bits == 8:
        return packed[:, :columns]
    words = packed.reshape(rows, -1, bits)
    codes = torch.empty((rows, words.shape[1], CODES_PER_WORD), dtype=torch.uint8, device=packed.device)
    mask = (1 << bits) - 1
    # Code i of a word starts at bit bits·i: in byte (bits·i) // 8, possibly running into the next.
    # uint8 shifts drop the bits pushed past the byte, which are exactly the ones not wanted.
    for i in range(CODES_PER_WORD):
        byte, shift = divmod(bits * i, 8)
        code = words[:, :, byte] >> shift
        if shift + bits > 8:
            code = code | (words[:, :, byte + 1] << (8 - shift))
        codes[:, :, i] = code & mask
    return codes.reshape(rows, -1)[:, :columns]
